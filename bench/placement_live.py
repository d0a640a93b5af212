"""Packing through the running master: the placement benchmark's workloads submitted as
Marathon apps to a real master (a `tessera master` process, HTTPS and auth on) with simulated
agents on the real agent protocol (`tessera.testing.sim_agent`), against `tessera simulate`
(a subprocess) on the same cluster and workload files, in the same run.

    .venv/bin/python -m bench.placement --parts master [--seeds 3] [--apps 300] [--family TEXT]

For each seed: the lower bound, the agents `tessera simulate` uses, and the agents the live
master uses when the whole workload arrives at once (one `POST /v2/groups`: a batch) and when
it arrives app by app (one `POST /v2/apps` each, as fast as the API answers). Goal (issue 11
item 1): the live master within 1 percentage point of the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.packing_workload import Family, PackingWorkload, generate, lower_bound
from tessera.testing.cluster import Cluster
from tessera.testing.sim_agent import SimAgent, fleet

SLEEP = "sleep 3600"
SETTLE_SECONDS = 600.0


@dataclass
class LiveRow:
    seed: int
    tasks: int
    bound: int
    simulated: int
    batch: int | None = None
    one_by_one: int | None = None
    batch_seconds: float = 0.0
    one_by_one_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def marathon_apps(workload: PackingWorkload) -> list[dict[str, Any]]:
    apps = []
    for index, (demand, count) in enumerate(zip(workload.demands, workload.instances, strict=True)):
        cpus, mem, disk, _ = (float(x) for x in demand)
        fixed = int(workload.fixed_port[index])
        ports = ([fixed] if fixed else []) + [0] * (int(workload.host_ports[index]) - bool(fixed))
        app: dict[str, Any] = {
            "id": f"/bench/app{index:04d}",
            "cmd": SLEEP,
            "instances": int(count),
            "cpus": cpus,
            "mem": mem,
            "disk": disk,
            "portDefinitions": [{"port": port} for port in ports],
        }
        if fixed:
            app["requirePorts"] = True
        if workload.unique[index]:
            app["constraints"] = [["hostname", "UNIQUE"]]
        apps.append(app)
    return apps


def agent_resources(workload: PackingWorkload) -> dict[str, Any]:
    cpus, mem, disk, _ = (float(x) for x in workload.machine)
    return {"cpus": cpus, "mem": mem, "disk": disk, "gpus": 0, "ports": [[31000, 31100]]}


def simulate_agents(workload: PackingWorkload, n_agents: int, directory: Path) -> int:
    """Agents used by `tessera simulate` on the same cluster and workload, as files."""
    resources = agent_resources(workload)
    cluster = {"agents": [{"id": "sim", "resources": resources, "count": n_agents}]}
    (directory / "cluster.json").write_text(json.dumps(cluster))
    (directory / "workload.json").write_text(json.dumps({"apps": marathon_apps(workload)}))
    output = directory / "plan.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera",
            "simulate",
            "--cluster",
            str(directory / "cluster.json"),
            "--workload",
            str(directory / "workload.json"),
            "--output",
            str(output),
        ],
        check=True,
        capture_output=True,
    )
    return int(json.loads(output.read_text())["summary"]["agents_used"])


def _settled(http: httpx.Client, total: int) -> dict[str, Any] | None:
    """Every instance running, or the queue unchanged (what stays queued has reasons)."""
    tasks = [t for t in http.get("/v1/tasks").json()["tasks"] if t["id"].startswith("bench_")]
    running = [t for t in tasks if t["state"] == "TASK_RUNNING"]
    queued = [t for t in tasks if t["state"] == "TASK_QUEUED"]
    if len(running) == total or (
        len(running) + len(queued) == total and all(t["queuedReasons"] for t in queued)
    ):
        return {
            "agents": len({t["agentId"] for t in running}),
            "unplaced": len(queued),
        }
    return None


async def _wait(http: httpx.Client, total: int) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(_settled, http, total)
        if found is not None:
            return found
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{total} instances did not settle in {SETTLE_SECONDS:.0f} s")


@contextlib.asynccontextmanager
async def simulated_cluster(
    n_agents: int, resources: dict[str, Any], zones: int = 1, timeout: float = 120
) -> AsyncIterator[httpx.Client]:
    """A `tessera master` process with `n_agents` simulated agents registered; yields an
    API client with the superuser's credentials. Everything stops on the way out."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-live-") as root:
        cluster = Cluster(Path(root), heartbeat_interval=5.0, misses=3)
        cluster.start_master()
        agents: list[SimAgent] = []
        try:
            token, _pin = cluster.join_token()
            trust = cluster.ssl_context
            agents = fleet(n_agents, [cluster.url], token, resources, zones, trust)
            for agent in agents:
                agent.start()
            await asyncio.wait_for(asyncio.gather(*(a.registered.wait() for a in agents)), 120)
            with httpx.Client(
                base_url=cluster.url, timeout=timeout, headers=cluster.headers, verify=trust
            ) as http:
                yield http
        finally:
            for agent in agents:
                await agent.stop()
            cluster.stop()


async def _run_live(
    workload: PackingWorkload, n_agents: int, batch: bool
) -> tuple[dict[str, Any], float]:
    async with simulated_cluster(n_agents, agent_resources(workload)) as http:
        apps = marathon_apps(workload)
        started = time.perf_counter()
        if batch:
            group = {"id": "/bench", "apps": apps}
            await asyncio.to_thread(_post, http, "/v2/groups", group)
        else:
            for app in apps:
                await asyncio.to_thread(_post, http, "/v2/apps", app)
        result = await _wait(http, workload.n_tasks)
        return result, time.perf_counter() - started


def _post(http: httpx.Client, path: str, body: Any) -> None:
    response = http.post(path, json=body)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")


def run_live(seeds: int, n_apps: int, family: Family | None = None) -> list[LiveRow]:
    """`family` (bench/packing_workload.py): its workloads instead of `generate`'s."""
    rows = []
    for seed in range(seeds):
        workload = family.draw(seed) if family else generate(seed, n_apps)
        bound = lower_bound(workload)
        n_agents = math.ceil(1.3 * bound) + 2
        with tempfile.TemporaryDirectory(prefix="tessera-simulate-") as directory:
            simulated = simulate_agents(workload, n_agents, Path(directory))
        row = LiveRow(seed, workload.n_tasks, bound, simulated)
        batch, row.batch_seconds = asyncio.run(_run_live(workload, n_agents, batch=True))
        row.batch = batch["agents"]
        if batch["unplaced"]:
            row.notes.append(f"batch: {batch['unplaced']} unplaced")
        single, row.one_by_one_seconds = asyncio.run(_run_live(workload, n_agents, batch=False))
        row.one_by_one = single["agents"]
        if single["unplaced"]:
            row.notes.append(f"one by one: {single['unplaced']} unplaced")
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _over(agents: int | None, bound: int) -> str:
    return "-" if agents is None else f"{agents} (+{100 * (agents - bound) / bound:.1f}%)"


def format_row(row: LiveRow) -> str:
    return (
        f"seed {row.seed}: {row.tasks} tasks, lower bound {row.bound}; "
        f"simulate {_over(row.simulated, row.bound)}; "
        f"live batch {_over(row.batch, row.bound)} in {row.batch_seconds:.1f} s; "
        f"live app by app {_over(row.one_by_one, row.bound)} in {row.one_by_one_seconds:.1f} s"
        + (f" [{'; '.join(row.notes)}]" if row.notes else "")
    )


def format_live(rows: list[LiveRow]) -> str:
    def gaps(name: str) -> list[float]:
        return [
            100 * ((getattr(r, name) or 0) - r.bound) / r.bound
            for r in rows
            if getattr(r, name) is not None
        ]

    sim, batch, single = gaps("simulated"), gaps("batch"), gaps("one_by_one")
    lines = ["", "packing through the master (agents over the lower bound, mean / worst)"]
    named = (("tessera simulate", sim), ("live, batch", batch), ("live, app by app", single))
    for name, values in named:
        lines.append(f"  {name:<22} {statistics.mean(values):5.1f}% / {max(values):5.1f}%")
    diff = max(b - s for b, s in zip(batch, sim, strict=True))
    verdict = "met" if diff <= 1.0 else "NOT met"
    lines.append(f"  goal: live batch within 1 pp of simulate: {verdict} (worst {diff:+.1f} pp)")
    return "\n".join(lines)
