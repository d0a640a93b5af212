"""Container benchmark: container tasks through a real master and real agents, from the API
call to the moment the container's command has started, against plain tasks and against
`skopeo copy` + `umoci unpack`.

1. Cold pull + start of a 3-layer busybox image (gzip, gzip, zstd) and of a ~150 MB image
   (busybox + a gzip layer of this machine's /usr/lib/python3.11 and /usr/share/doc), each
   on a new agent whose image store has never seen it; then warm starts on that agent.
2. Warm starts of container tasks (image cached) against plain tasks on the same two
   agents, one at a time, alternating: p50/p99. Goals: container p99 <= 300 ms and within
   2x of a plain task's. Bridged container tasks (CNI) are timed as well.
3. 50 container tasks POSTed at once (and 50 plain ones): until all have started, per-task
   p50/p99.
4. The 150 MB pull: through the product (cold start minus warm start on the same agent) and
   through `ImageStore.ensure` in-process, against `skopeo copy` + `umoci unpack` of the
   same image in the same run (goal: within 1.3x). skopeo and umoci are bench-only tools,
   not product dependencies; without them that comparison is skipped with the reason.

Every task runs the same script in the same static busybox shell (the image's /bin/sh is
this machine's /bin/busybox; a plain task runs `/bin/busybox sh -c` as its argv), whose
first action writes the wall clock in µs into `started` in its sandbox (busybox's
`adjtimex` applet, run without an exec; busybox's date has no sub-second format and a new
file's mtime is at the kernel's 4 ms tick). TASK_RUNNING is the master's `startedAt`.
The page cache is dropped before every cold measurement, on each side.

Needs root (runc, overlay mounts, cgroups); without it, says why and exits 0.
Run: .venv/bin/python -m bench.containers [--warm 200] [--burst 50] [--cold-reps 5]
     [--bridged 50]; --quick for a small run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.container_images import (
    Pushed,
    ReferencePull,
    drop_caches,
    ensure_seconds,
    push_big,
    push_small,
    skopeo_umoci,
    skopeo_umoci_missing,
)
from tessera.agent.containers.network import netns_name
from tessera.testing.cluster import Cluster, Daemon, live_task_ids, wait_for
from tessera.testing.containers import container_support, leftovers, network_leftovers
from tessera.testing.registry import Registry, unique_repository

AGENT_RESOURCES = "cpus:8;mem:16384;disk:20000;ports:[{begin}-{end}]"
BRIDGE = "bchbr{index}"  # names and subnets no test uses
SUBNET = "10.253.{index}.0/24"
SCRIPT = "adjtimex > started && exec sleep 600"
TASK_PREFIX = "bch"
ENDED = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_GONE"}
LIVE = ["TASK_QUEUED", "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"]
WARM_REPEATS = 3  # warm starts after each cold one, on the same agent


def plain_task(**changes: Any) -> dict[str, Any]:
    body = {
        "name": f"{TASK_PREFIX}-plain",
        "args": ["/bin/busybox", "sh", "-c", SCRIPT],
        "cpus": 0.1,
        "mem": 64,
        # The container's command is its PID 1, which ignores SIGTERM: no grace to wait out.
        "killGracePeriodSeconds": 0,
    }
    return {**body, **changes}


def container_task(image: str, bridged: bool = False, **changes: Any) -> dict[str, Any]:
    body = plain_task(name=f"{TASK_PREFIX}-ctr", **changes)
    del body["args"]
    body["cmd"] = SCRIPT  # the image's /bin/sh -c
    body["container"] = {"type": "MESOS", "docker": {"image": image}}
    if bridged:
        body["networks"] = [{"mode": "container/bridge"}]
    return body


@dataclass(frozen=True)
class Start:
    task_id: str
    agent: str
    started_ms: float  # POST -> the command's first action
    running_ms: float  # POST -> TASK_RUNNING as the master recorded it


def _clock(path: Path) -> float | None:
    """The time `busybox adjtimex` printed, once it has printed it all."""
    lines = [line.split(":", 1) for line in path.read_text().splitlines() if ":" in line]
    fields = {key.strip(): value for key, value in lines}
    try:
        return int(fields["time.tv_sec"]) + int(fields["time.tv_usec"]) / 1e6
    except (KeyError, ValueError):
        return None


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def spread(values: Sequence[float]) -> str:
    return f"p50 {statistics.median(values):7.1f}  p99 {percentile(values, 0.99):7.1f} ms"


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Bench:
    root: Path
    registry: str
    cluster: Cluster = field(init=False)
    agent_dirs: dict[str, Path] = field(default_factory=dict)
    every_agent_dir: list[Path] = field(default_factory=list)
    agent_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cluster = Cluster(self.root)

    # -- agents --------------------------------------------------------------------------

    def start_agent(self, name: str, index: int) -> None:
        begin = 31000 + index * 100
        extra = [
            "--insecure-registries",
            self.registry,
            "--bridge",
            BRIDGE.format(index=index),
            "--bridge-subnet",
            SUBNET.format(index=index + 1),
        ]
        resources = AGENT_RESOURCES.format(begin=begin, end=begin + 99)
        self.cluster.start_agent(name, resources, host=f"127.0.0.{index + 2}", extra=extra)
        self.agent_dirs[name] = self.root / name
        self.every_agent_dir.append((self.root / name).absolute())
        self.agent_ids.append(self._agent_id(name))

    def _agent_id(self, name: str) -> str:
        return (self.root / name / "agent-id").read_text().strip()

    def _daemon(self, name: str) -> Daemon:
        return next(agent for agent in self.cluster.agents if agent.name == name)

    def stop_agent(self, name: str) -> None:
        """Stop it, and wait until the master no longer places tasks there."""
        self._daemon(name).stop()
        agent_id = self._agent_id(name)
        wait_for(
            lambda: all(
                a["state"] != "ACTIVE"
                for a in self.cluster.get("/v1/agents")["agents"]
                if a["id"] == agent_id
            ),
            30,
            f"{name} to leave",
        )
        del self.agent_dirs[name]

    # -- one task ------------------------------------------------------------------------

    def _marker(self, task_id: str) -> tuple[Path, str] | None:
        for name, work in self.agent_dirs.items():
            path = work / "sandboxes" / task_id / "started"
            if path.exists():
                return path, name
        return None

    def _failed(self, task_id: str) -> None:
        task = self.cluster.task(task_id)
        if task["state"] in ENDED:
            raise RuntimeError(f"{task_id} ended: {task['state']} {task['message']}")

    def wait_started(self, task_id: str, timeout: float) -> tuple[float, str]:
        """(the time the task's command wrote into `started`, agent name)."""
        deadline = time.monotonic() + timeout
        checks = 0
        while time.monotonic() < deadline:
            if (found := self._marker(task_id)) and (clock := _clock(found[0])):
                return clock, found[1]
            checks += 1
            if checks % 50 == 0:  # every half second: a failed launch ends the wait
                self._failed(task_id)
            time.sleep(0.01)
        self._failed(task_id)
        raise AssertionError(f"{task_id} did not start within {timeout:g} s")

    def wait_running(self, task_id: str) -> float:
        task = poll(
            lambda: (t := self.cluster.task(task_id))["startedAt"] and t,
            30,
            f"{task_id} running",
            0.02,
        )
        return _epoch(task["startedAt"])

    def start(self, body: dict[str, Any], timeout: float = 60) -> Start:
        """POST one task and time it; it is killed and gone before this returns."""
        posted = time.time()
        task_id = self.cluster.launch(**body)["id"]
        started, agent = self.wait_started(task_id, timeout)
        running = self.wait_running(task_id)
        self.kill([task_id])
        return Start(task_id, agent, (started - posted) * 1000, (running - posted) * 1000)

    def kill(self, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            self.cluster.http.delete(f"/v1/tasks/{task_id}")
        pending = set(task_ids)

        def ended() -> bool:
            # Ended tasks may leave the master's task list: wait for them to leave the live one.
            live = self.cluster.get("/v1/tasks", params={"state": LIVE})["tasks"]
            return not pending.intersection(t["id"] for t in live)

        poll(ended, 60, "tasks to be killed", 0.02)

    # -- many at once --------------------------------------------------------------------

    def burst(self, body: dict[str, Any], count: int) -> tuple[float, list[Start]]:
        """POST `count` tasks together; (seconds until all started, each task's times)."""

        async def post_all() -> list[tuple[float, str]]:
            limits = httpx.Limits(max_connections=count)
            async with httpx.AsyncClient(
                base_url=self.cluster.url,
                timeout=60,
                limits=limits,
                headers=self.cluster.headers,
                verify=self.cluster.ssl_context,
            ) as http:

                async def post() -> tuple[float, str]:
                    posted = time.time()
                    response = await http.post("/v1/tasks", json=body)
                    response.raise_for_status()
                    return posted, str(response.json()["id"])

                return await asyncio.gather(*(post() for _ in range(count)))

        posts = asyncio.run(post_all())
        first = min(posted for posted, _ in posts)
        starts = []
        for posted, task_id in posts:
            started, agent = self.wait_started(task_id, 120)
            running = self.wait_running(task_id)
            starts.append(
                Start(task_id, agent, (started - posted) * 1000, (running - posted) * 1000)
            )
        killing = time.monotonic()
        self.kill([task_id for _, task_id in posts])
        print(f"   ({count} killed in {time.monotonic() - killing:.1f} s)")
        last = max(
            s.started_ms / 1000 + posted for s, (posted, _) in zip(starts, posts, strict=True)
        )
        return last - first, starts


# -- the phases ------------------------------------------------------------------------


@dataclass
class ColdRound:
    small_cold: Start
    small_warm: list[Start]
    big_cold: Start
    big_warm: list[Start]
    ensure_s: float
    reference: ReferencePull | None

    @property
    def product_pull_s(self) -> float:
        warm = statistics.median(s.started_ms for s in self.big_warm)
        return (self.big_cold.started_ms - warm) / 1000


def cold_round(bench: Bench, rep: int, small: Pushed, big: Pushed, reference_ok: bool) -> ColdRound:
    name = f"cold-{rep + 1}"
    bench.start_agent(name, 10 + rep)
    try:
        drop_caches()
        small_cold = bench.start(container_task(small.reference), timeout=120)
        small_warm = [bench.start(container_task(small.reference)) for _ in range(WARM_REPEATS)]
        drop_caches()
        big_cold = bench.start(container_task(big.reference), timeout=300)
        big_warm = [bench.start(container_task(big.reference)) for _ in range(WARM_REPEATS)]
    finally:
        bench.stop_agent(name)
    scratch = bench.root / f"reference-{rep + 1}"
    drop_caches()
    ensure_s = ensure_seconds(big.reference, bench.registry, scratch / "store")
    reference = None
    if reference_ok:
        drop_caches()
        reference = skopeo_umoci(big.reference, scratch)
    shutil.rmtree(scratch)
    found = ColdRound(small_cold, small_warm, big_cold, big_warm, ensure_s, reference)
    print(
        f"  cold round {rep + 1}: 3-layer cold {small_cold.started_ms:.0f} ms (running "
        f"{small_cold.running_ms:.0f}), warm {_med(small_warm):.0f} ms; 150 MB cold "
        f"{big_cold.started_ms:.0f} ms (running {big_cold.running_ms:.0f}), warm "
        f"{_med(big_warm):.0f} ms -> product pull {found.product_pull_s:.2f} s; "
        f"ensure {ensure_s:.2f} s"
        + (
            f"; skopeo {reference.skopeo_s:.2f} + umoci {reference.umoci_s:.2f} = "
            f"{reference.total_s:.2f} s (umoci raw unpack {reference.umoci_raw_s:.2f} s)"
            if reference is not None
            else ""
        ),
        flush=True,
    )
    return found


def _med(starts: Sequence[Start]) -> float:
    return statistics.median(s.started_ms for s in starts)


def warm_phase(bench: Bench, image: str, count: int, bridged: int) -> dict[str, list[Start]]:
    """Alternating container and plain tasks, one at a time; then bridged containers."""
    found: dict[str, list[Start]] = {"container": [], "plain": [], "bridged": []}
    for index in range(count):
        found["container"].append(bench.start(container_task(image)))
        found["plain"].append(bench.start(plain_task()))
        if (index + 1) % 50 == 0:
            print(f"  warm: {index + 1} of {count} pairs", flush=True)
    for _ in range(bridged):
        found["bridged"].append(bench.start(container_task(image, bridged=True)))
    return found


def prewarm(bench: Bench, image: str) -> None:
    """Pull the image on both agents (tasks too big for two on one agent), host and bridged."""
    for bridged in (False, True):
        ids = [
            bench.cluster.launch(**container_task(image, bridged, cpus=5))["id"] for _ in range(2)
        ]
        places = {bench.wait_started(task_id, 120)[1] for task_id in ids}
        assert len(places) == 2, f"both pre-warm tasks went to {places}"
        bench.kill(ids)


# -- report ----------------------------------------------------------------------------


def report_cold(rounds: list[ColdRound], reference_why: str | None) -> dict[str, float]:
    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    small_cold = med([r.small_cold.started_ms for r in rounds])
    big_cold = med([r.big_cold.started_ms for r in rounds])
    product = med([r.product_pull_s for r in rounds])
    ensure = med([r.ensure_s for r in rounds])
    print(f"\n1. cold pull + start (median of {len(rounds)} new agents), API -> command:")
    print(
        f"   3-layer busybox: {small_cold:.0f} ms (TASK_RUNNING "
        f"{med([r.small_cold.running_ms for r in rounds]):.0f} ms); warm on the same agent "
        f"{med([_med(r.small_warm) for r in rounds]):.0f} ms"
    )
    print(
        f"   150 MB image:    {big_cold:.0f} ms (TASK_RUNNING "
        f"{med([r.big_cold.running_ms for r in rounds]):.0f} ms); warm on the same agent "
        f"{med([_med(r.big_warm) for r in rounds]):.0f} ms"
    )
    print("\n4. the 150 MB pull (median of each side, page cache dropped before each run):")
    print(f"   tessera, through the product (cold start - warm start): {product:.2f} s")
    print(f"   tessera, ImageStore.ensure in-process:                  {ensure:.2f} s")
    figures = {"product_pull_s": product, "ensure_s": ensure}
    if reference_why is not None:
        print(f"   skopeo + umoci: skipped: {reference_why}")
        return figures
    pulls = [r.reference for r in rounds if r.reference is not None]
    both, raw = med([p.total_s for p in pulls]), med([p.raw_total_s for p in pulls])
    print(
        f"   skopeo copy {med([p.skopeo_s for p in pulls]):.2f} s + umoci unpack "
        f"{med([p.umoci_s for p in pulls]):.2f} s: {both:.2f} s (median of the sums; "
        "bench-only tools)"
    )
    print(f"   skopeo copy + umoci raw unpack (no mtree of the files, no config.json): {raw:.2f} s")
    for label, reference in (("skopeo + umoci unpack", both), ("skopeo + umoci raw", raw)):
        print(
            f"   ratio to {label}: product {product / reference:.2f}x, in-process "
            f"{ensure / reference:.2f}x  (goal <= 1.3x)"
        )
    return {**figures, "reference_s": both, "raw_reference_s": raw}


def report_warm(found: dict[str, list[Start]]) -> None:
    container, plain = found["container"], found["plain"]
    print(f"\n2. warm starts, one at a time ({len(container)} container / {len(plain)} plain):")
    print("   API -> command started:")
    rows = [("container", container), ("plain", plain), ("bridged container", found["bridged"])]
    for label, starts in rows:
        if starts:
            print(f"     {label:18} {spread([s.started_ms for s in starts])}")
    print("   API -> TASK_RUNNING:")
    for label, starts in rows:
        if starts:
            print(f"     {label:18} {spread([s.running_ms for s in starts])}")
    c50, c99 = _p(container, 0.5), _p(container, 0.99)
    p50, p99 = _p(plain, 0.5), _p(plain, 0.99)
    print(
        f"   ratio container/plain (command started): p50 {c50 / p50:.2f}x, p99 "
        f"{c99 / p99:.2f}x; goals p99 <= 300 ms: {'met' if c99 <= 300 else 'missed'}, "
        f"within 2x: {'met' if max(c50 / p50, c99 / p99) <= 2 else 'missed'}"
    )
    agents = sorted({s.agent for s in container + plain})
    counts = {a: sum(1 for s in container + plain if s.agent == a) for a in agents}
    print(f"   placed on: {counts}")


def _p(starts: Sequence[Start], fraction: float) -> float:
    return percentile([s.started_ms for s in starts], fraction)


def report_burst(label: str, elapsed: float, starts: list[Start]) -> None:
    print(
        f"   {label:10} all {len(starts)} started after {elapsed:.2f} s; per task "
        f"{spread([s.started_ms for s in starts])}; TASK_RUNNING "
        f"{spread([s.running_ms for s in starts])}"
    )


# -- set-up and clean-up ---------------------------------------------------------------


def host_leftovers(bench: Bench) -> list[str]:
    found = leftovers(bench.root.name)
    for agent_id in bench.agent_ids:
        found += leftovers(agent_id)
    # Namespace names start with a hash of the agent's network dir: one prefix per agent.
    prefixes = [netns_name(work / "network", "")[:17] for work in bench.every_agent_dir]
    found += network_leftovers(prefixes)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("bchbr"):
            found.append(f"bridge {name}")
            subprocess.run(["ip", "link", "del", name], check=False)
    found += [f"process of {task}" for task in live_task_ids(TASK_PREFIX)]
    return found


def run(args: argparse.Namespace) -> None:
    marker = f"tessera-bench-ctr-{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix=f"{marker}-"))
    root.chmod(0o755)  # tasks run as nobody and must reach their sandboxes
    reference_why = skopeo_umoci_missing()
    if (why := drop_caches()) is not None:
        print(f"note: {why}; cold runs read through a warm page cache")
    bench: Bench | None = None
    try:
        with Registry() as registry:
            t = time.monotonic()
            small = push_small(registry.host, unique_repository("bench-small"))
            big = push_big(registry.host, unique_repository("bench-big"), root / "build")
            print(
                f"images pushed in {time.monotonic() - t:.1f} s: 3-layer busybox "
                f"{small.compressed_bytes / 1e6:.2f} MB compressed; big image "
                f"{big.compressed_bytes / 1e6:.0f} MB compressed, {big.content_bytes / 1e6:.0f}"
                " MB of files",
                flush=True,
            )
            bench = Bench(root, registry.host)
            bench.cluster.start_master()
            rounds = [
                cold_round(bench, rep, small, big, reference_why is None)
                for rep in range(args.cold_reps)
            ]
            if rounds:
                report_cold(rounds, reference_why)
            for index, name in enumerate(("agent-1", "agent-2")):
                bench.start_agent(name, index)
            prewarm(bench, small.reference)
            report_warm(warm_phase(bench, small.reference, args.warm, args.bridged))
            print(f"\n3. {args.burst} tasks POSTed at once:")
            report_burst("container", *bench.burst(container_task(small.reference), args.burst))
            report_burst("plain", *bench.burst(plain_task(), args.burst))
    finally:
        if bench is not None:
            bench.cluster.stop()
            left = host_leftovers(bench)
            print(f"\nleft behind: {left or 'nothing'}")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200, help="container/plain pairs")
    parser.add_argument("--bridged", type=int, default=50, help="bridged container tasks")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--cold-reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 pairs, 5 bridged, 10, 1")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.warm, args.bridged, args.burst, args.cold_reps = 20, 5, 10, 1
    if os.geteuid() != 0:
        print("bench.containers needs root (runc, overlay mounts, cgroups); not run")
        return
    if (why := container_support()) is not None:
        print(f"bench.containers cannot run here: {why}")
        return
    run(args)


if __name__ == "__main__":
    main()
