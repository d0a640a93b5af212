"""The rebalancer through the running master: churn made through the Marathon API on a real
master (a `tessera master` process, HTTPS and auth on) with simulated agents on the real
agent protocol (`tessera.testing.sim_agent`), then `POST /v1/rebalance` executed wave by
wave, with every app's running instances sampled all along.

    .venv/bin/python -m bench.rebalance_live [--seeds 1] [--agents 200]

Each seed: the apps of `bench.rebalance` (same generator, same seed; GROUP_BY on the
agents' `zone`) deployed as one group; churn through the API (deletes and scale-downs of
20-40% of the instances, then new apps at 10% of the capacity); then a dry run (the plan,
its planning time as the master reports it) and the real rebalance. Reported: agents in
use before and after against the lower bound, what the plan promised against what the
cluster reached, moves against the minimum, planning and execution time, and the samples
where an app had fewer running instances than its minimumHealthCapacity allows or more
than its maximumOverCapacity allows (goal: none).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bench.placement_live import simulated_cluster
from bench.rebalance import AGENT, FILL, NEW_WORK, App, _apps
from tessera.model.constraints import Operator

SLEEP = "sleep 3600"
ZONES = 20
SETTLE_SECONDS = 600.0
REBALANCE_SECONDS = 1800.0


def marathon_app(app: App, instances: int) -> dict[str, Any]:
    constraints = []
    for constraint in app.constraints:
        if constraint.operator is Operator.GROUP_BY:
            constraints.append(["zone", "GROUP_BY"])
        else:
            constraints.append([constraint.field, constraint.operator.value])
    return {
        "id": app.app_id.rsplit("/", 1)[-1],
        "cmd": SLEEP,
        "instances": instances,
        "cpus": app.resources.cpus,
        "mem": app.resources.mem,
        "disk": 0,
        "portDefinitions": [],
        "constraints": constraints,
        "upgradeStrategy": {"minimumHealthCapacity": app.min_health, "maximumOverCapacity": 1.0},
    }


def _agent_resources() -> dict[str, Any]:
    return {"cpus": AGENT.cpus, "mem": AGENT.mem, "disk": AGENT.disk, "gpus": 0, "ports": []}


def _check(response: httpx.Response, what: str) -> Any:
    if response.status_code not in (200, 201):
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response.json()


def _settled(http: httpx.Client, expected: int) -> bool:
    if http.get("/v2/deployments").json():
        return False
    tasks = http.get("/v1/tasks").json()["tasks"]
    running = sum(1 for t in tasks if t["state"] == "TASK_RUNNING")
    return running == expected


def _wait_settled(http: httpx.Client, expected: int) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        if _settled(http, expected):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{expected} instances did not settle in {SETTLE_SECONDS:.0f} s")


def _in_use(http: httpx.Client) -> int:
    return sum(1 for a in http.get("/v1/agents").json()["agents"] if a["tasks"] > 0)


class Watch:
    """Samples /v2/apps every 0.1 s: the samples where an app ran fewer instances than
    ceil(n x minimumHealthCapacity) or more than floor(n x (1 + maximumOverCapacity))."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.samples = 0
        self.below: list[str] = []
        self.above: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for app in self.http.get("/v2/apps").json()["apps"]:
                n = app["instances"]
                strategy = app["upgradeStrategy"]
                low = math.ceil(n * strategy["minimumHealthCapacity"] - 1e-9)
                high = math.floor(n * (1 + strategy["maximumOverCapacity"]) + 1e-9)
                if app["tasksRunning"] < low:
                    self.below.append(f"{app['id']}: {app['tasksRunning']} < {low}")
                if app["tasksRunning"] + app["tasksStaged"] > high:
                    self.above.append(f"{app['id']}: > {high}")
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class LiveResult:
    seed: int
    agents: int
    instances: int = 0
    bound: int = 0
    before: int = 0
    planned_after: int = 0
    after: int = 0
    moves: int = 0
    minimum_moves: int = 0
    waves: int = 0
    planning_seconds: float = 0.0
    dry_run_seconds: float = 0.0
    execution_seconds: float = 0.0
    status: str = ""
    samples: int = 0
    below: list[str] = field(default_factory=list)
    above: list[str] = field(default_factory=list)


def _churn(http: httpx.Client, rng: np.random.Generator, apps: list[App]) -> int:
    """Delete apps and scale others down through the API: 20-40% of the instances."""
    total = sum(app.instances for app in apps)
    target = rng.uniform(0.2, 0.4) * total
    removed = 0
    left = total
    for k in rng.permutation(len(apps)).tolist():
        if removed >= target:
            break
        app = apps[k]
        if rng.random() < 0.25:
            _check(http.delete(f"/v2/apps{app.app_id}"), f"delete {app.app_id}")
            removed += app.instances
            left -= app.instances
        else:
            drop = round(app.instances * rng.uniform(0.3, 0.7))
            if drop == 0:
                continue
            body = {"instances": app.instances - drop}
            _check(http.put(f"/v2/apps{app.app_id}", json=body), f"scale {app.app_id}")
            removed += drop
            left -= drop
    return left


def _scenario(http: httpx.Client, seed: int, n_agents: int, result: LiveResult) -> None:
    rng = np.random.default_rng(seed)
    capacity = n_agents * AGENT.cpus, n_agents * AGENT.mem
    apps = [
        App(f"/bench/{a.app_id[1:]}", a.instances, a.resources, a.constraints, a.min_health)
        for a in _apps(rng, "app", FILL * capacity[0], FILL * capacity[1])
    ]
    group = {"id": "/bench", "apps": [marathon_app(a, a.instances) for a in apps]}
    _check(http.post("/v2/groups", json=group), "deploy /bench")
    _wait_settled(http, sum(a.instances for a in apps))
    left = _churn(http, rng, apps)
    new = [
        App(f"/new/{a.app_id[1:]}", a.instances, a.resources, a.constraints, a.min_health)
        for a in _apps(rng, "new", NEW_WORK * capacity[0], NEW_WORK * capacity[1])
    ]
    _check(
        http.post(
            "/v2/groups", json={"id": "/new", "apps": [marathon_app(a, a.instances) for a in new]}
        ),
        "deploy /new",
    )
    expected = left + sum(a.instances for a in new)
    _wait_settled(http, expected)
    result.instances = expected
    result.before = _in_use(http)

    began = time.perf_counter()
    plan = _check(http.post("/v1/rebalance", json={"dryRun": True}), "dry run")
    result.dry_run_seconds = time.perf_counter() - began
    result.planning_seconds = plan["planningSeconds"]
    result.bound = plan["lowerBound"]
    result.planned_after = plan["agentsAfter"]
    result.minimum_moves = plan["minimumMoves"]

    with Watch(http) as watch:
        began = time.perf_counter()
        started = _check(http.post("/v1/rebalance", json={}), "rebalance")
        if started.get("id") is None:
            result.status = f"nothing to do: {started.get('reason')}"
            return
        deadline = time.monotonic() + REBALANCE_SECONDS
        status = started
        while status["status"] in ("RUNNING", "CANCELLING") and time.monotonic() < deadline:
            time.sleep(0.5)
            status = _check(http.get(f"/v1/rebalance/{started['id']}"), "status")
        result.execution_seconds = time.perf_counter() - began
    result.status = status["status"] + (f" ({status['message']})" if status.get("message") else "")
    result.moves = status["moves"]
    result.waves = status["waves"]
    result.samples = watch.samples
    result.below = watch.below
    result.above = watch.above
    time.sleep(2)
    result.after = _in_use(http)


async def run_seed(seed: int, n_agents: int) -> LiveResult:
    result = LiveResult(seed, n_agents)
    async with simulated_cluster(n_agents, _agent_resources(), ZONES, timeout=300) as http:
        await asyncio.to_thread(_scenario, http, seed, n_agents, result)
    return result


def _over(agents: int, bound: int) -> str:
    return f"{agents} (+{100 * (agents - bound) / max(bound, 1):.1f}%)"


def format_result(r: LiveResult) -> str:
    ratio = r.moves / r.minimum_moves if r.minimum_moves else float("nan")
    lines = [
        f"seed {r.seed}: {r.agents} agents, {r.instances} instances after churn, "
        f"lower bound {r.bound}",
        f"  in use before {_over(r.before, r.bound)}; planned {_over(r.planned_after, r.bound)}; "
        f"reached {_over(r.after, r.bound)}",
        f"  {r.moves} moves ({ratio:.2f}x the minimum {r.minimum_moves}) in {r.waves} waves; "
        f"planning {r.planning_seconds:.2f} s on the master (dry run answered in "
        f"{r.dry_run_seconds:.2f} s); executed in {r.execution_seconds:.1f} s: {r.status}",
        f"  {r.samples} samples of every app: {len(r.below)} below minimumHealthCapacity, "
        f"{len(r.above)} above maximumOverCapacity",
    ]
    for violation in (r.below + r.above)[:5]:
        lines.append(f"    {violation}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--agents", type=int, default=200)
    args = parser.parse_args(argv)
    results = []
    for seed in range(args.seeds):
        result = asyncio.run(run_seed(seed, args.agents))
        print(format_result(result), flush=True)
        results.append(result)
    if len(results) > 1:
        print(
            "medians: planning "
            f"{statistics.median(r.planning_seconds for r in results):.2f} s, execution "
            f"{statistics.median(r.execution_seconds for r in results):.1f} s"
        )
    clean = all(not r.below and not r.above for r in results)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
