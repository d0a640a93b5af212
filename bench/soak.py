"""Soak: the fault scenarios of tests/faults, repeated at random for as long as asked.

A real master (SQLite) and three real agents on loopback run an app of 6 instances and 10
one-off tasks. Each round injects one fault at random: `kill -9` of an agent (restarted at
once), `kill -9` of the master (restarted at once), or an agent paused (SIGSTOP) past its
detection time and resumed. After each round the bench waits for the cluster to settle and
checks what must hold:

- every one-off task still runs in the same process as at the start (none restarted);
- the app runs exactly 6 instances, one process tree each, and no other process of it is
  left anywhere (stale copies on a returning agent are killed);
- every task the API ever acknowledged is still known.

Prints each round, then the number of rounds, violations and the time to settle
(median / max). Exit status 1 when anything was violated.

Run: .venv/bin/python bench/soak.py [--minutes 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tessera.testing.cluster import Cluster, Daemon, live_task_ids, task_trees, wait_for

APP = {
    "id": "/soak/svc",
    "cmd": "sleep 3600",
    "instances": 6,
    "cpus": 0.05,
    "mem": 16,
    "portDefinitions": [],
    "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 600},
}
ONE_OFFS = 10


def _settled(cluster: Cluster, one_offs: list[str]) -> bool:
    tasks = {t["id"]: t for t in cluster.get("/v1/tasks")["tasks"]}
    if any(tasks[t]["state"] != "TASK_RUNNING" for t in one_offs):
        return False
    if any(a["state"] != "ACTIVE" for a in cluster.get("/v1/agents")["agents"]):
        return False
    app = cluster.get("/v2/apps/soak/svc")["app"]
    running = {t["id"] for t in app["tasks"] if t["state"] == "TASK_RUNNING"}
    return len(running) == APP["instances"] and live_task_ids("soak_svc.") == running


def _why_not_settled(cluster: Cluster, one_offs: list[str]) -> str:
    tasks = {t["id"]: t for t in cluster.get("/v1/tasks")["tasks"]}
    states = sorted({tasks[t]["state"] for t in one_offs})
    agents = sorted(a["state"] for a in cluster.get("/v1/agents")["agents"])
    app = cluster.get("/v2/apps/soak/svc")["app"]
    running = {t["id"] for t in app["tasks"] if t["state"] == "TASK_RUNNING"}
    others = sorted(f"{t['id'][:14]}:{t['state']}" for t in app["tasks"] if t["id"] not in running)
    live = live_task_ids("soak_svc.")
    return (
        f"one-offs {states}; agents {agents}; app running {len(running)}, other {others}; "
        f"live processes not running {sorted(live - running)}, running without "
        f"process {sorted(running - live)}; deployments {len(cluster.get('/v2/deployments'))}"
    )


def _check(cluster: Cluster, one_offs: dict[str, int], acknowledged: set[str]) -> list[str]:
    problems = []
    for task_id, pid in one_offs.items():
        roots = task_trees(task_id)
        if [p.pid for p in roots] != [pid]:
            problems.append(f"one-off {task_id} runs as {[p.pid for p in roots]}, was {pid}")
    app = cluster.get("/v2/apps/soak/svc")["app"]
    for task in app["tasks"]:
        if len(task_trees(task["id"])) != 1:
            problems.append(f"instance {task['id']} has {len(task_trees(task['id']))} processes")
    known = {t["id"] for t in cluster.get("/v1/tasks")["tasks"]}
    problems += [f"acknowledged task {t} is gone" for t in acknowledged - known]
    return problems


def _fault(cluster: Cluster, rng: random.Random) -> str:
    kind = rng.choice(["agent-kill9", "master-kill9", "agent-pause"])
    if kind == "agent-kill9":
        agent = rng.choice(cluster.agents)
        agent.kill9()
        agent.start()
        return f"{kind} {agent.name}"
    if kind == "master-kill9":
        master = cluster.master
        assert master is not None
        master.kill9()
        cluster.start_master()
        return kind
    agent = rng.choice(cluster.agents)
    agent.signal(signal.SIGSTOP)
    time.sleep(cluster.heartbeat_interval * cluster.misses * 2)
    agent.signal(signal.SIGCONT)
    return f"{kind} {agent.name}"


def soak(minutes: float, seed: int) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="tessera-soak-") as root:
        cluster = Cluster(Path(root), heartbeat_interval=0.5, misses=3)
        cluster.start_master()
        try:
            for index in range(3):
                begin = 31000 + index * 100
                cluster.start_agent(
                    f"agent-{index + 1}",
                    f"cpus:2;mem:2048;disk:1000;ports:[{begin}-{begin + 99}]",
                    host=f"127.0.0.{index + 2}",
                )
            ids = [
                cluster.launch(name=f"one{i}", cmd="sleep 3600", cpus=0.05, mem=16)["id"]
                for i in range(ONE_OFFS)
            ]
            response = cluster.http.post("/v2/apps", json=APP)
            response.raise_for_status()
            wait_for(lambda: _settled(cluster, ids), 60, "the first deployment")
            one_offs = {task_id: task_trees(task_id)[0].pid for task_id in ids}
            acknowledged = set(ids)
            settle_times: list[float] = []
            violations: list[str] = []
            deadline = time.monotonic() + minutes * 60
            round_number = 0
            while time.monotonic() < deadline:
                round_number += 1
                what = _fault(cluster, rng)
                started = time.monotonic()
                # Give the master time to notice (three missed heartbeats) before asking
                # whether all is well again: right after the fault the old view still holds.
                time.sleep(cluster.heartbeat_interval * (cluster.misses + 1))
                try:
                    wait_for(lambda: _settled(cluster, ids), 60, "the cluster to settle")
                except AssertionError:
                    why = _why_not_settled(cluster, ids)
                    violations.append(f"round {round_number} ({what}): not settled: {why}")
                    print(f"round {round_number:3d}: {what:22s} did NOT settle")
                    continue
                settle_times.append(time.monotonic() - started)
                problems = _check(cluster, one_offs, acknowledged)
                violations += [f"round {round_number} ({what}): {p}" for p in problems]
                print(
                    f"round {round_number:3d}: {what:22s} settled in {settle_times[-1]:5.1f} s"
                    f"{'' if not problems else '  VIOLATED: ' + '; '.join(problems)}"
                )
            print(f"\n{round_number} rounds in {minutes:g} min, {len(violations)} violations")
            if settle_times:
                print(
                    f"time to settle: median {statistics.median(settle_times):.1f} s, "
                    f"max {max(settle_times):.1f} s"
                )
            for violation in violations:
                print(f"  {violation}")
            return 1 if violations else 0
        finally:
            cluster.stop()
            for daemon in [*cluster.agents]:
                _reap(daemon)


def _reap(daemon: Daemon) -> None:
    if daemon.process is not None and daemon.process.poll() is None:
        daemon.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(soak(args.minutes, args.seed))


if __name__ == "__main__":
    main()
