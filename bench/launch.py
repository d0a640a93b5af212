"""Launch benchmark: a local cluster of 4 real agents launching real `sleep 30` tasks.

(a) 1,000 one-off tasks submitted at once: time until all are TASK_RUNNING, and throughput.
(b) 300 tasks submitted one at a time at 30/s: submit-to-TASK_RUNNING latency p50/p90/p99.

References (perf.md): Docker Swarm 2015 p99 400 ms; a Mesos 1.7 agent launched 1,000
containers in about 30 s; the Kubernetes SLO is p99 <= 5 s. Goals here: (a) <= 10 s for all
1,000, (b) p99 <= 250 ms.

Run: .venv/bin/python bench/launch.py [--tasks 1000] [--paced 300] [--rate 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tessera.testing.cluster import Cluster, wait_for

AGENT_RESOURCES = "cpus:8;mem:8192;disk:1000;ports:[{begin}-{end}]"
TASK = {"name": "bench", "cmd": "sleep 30", "cpus": 0.01, "mem": 8}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def _submit(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, str]:
    submitted = time.time()
    response = await http.post("/v1/tasks", json=body)
    response.raise_for_status()
    return submitted, str(response.json()["id"])


def _running(cluster: Cluster, ids: set[str]) -> dict[str, dict[str, Any]]:
    tasks = cluster.get("/v1/tasks", params={"state": "TASK_RUNNING"})["tasks"]
    return {t["id"]: t for t in tasks if t["id"] in ids}


def _failed(cluster: Cluster, ids: set[str]) -> list[dict[str, Any]]:
    tasks = cluster.get("/v1/tasks")["tasks"]
    return [
        t
        for t in tasks
        if t["id"] in ids
        and t["state"] not in ("TASK_RUNNING", "TASK_QUEUED", "TASK_STAGING", "TASK_STARTING")
    ]


async def _submitter(http: httpx.AsyncClient, count: int) -> list[tuple[float, str]]:
    return [await _submit(http, TASK) for _ in range(count)]


async def burst(cluster: Cluster, count: int, clients: int = 16) -> dict[str, float]:
    # A fixed set of clients, each submitting back to back: gathering 1,000 requests on
    # one httpx pool measures the client's queueing, not the master.
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=cluster.url,
        timeout=60,
        limits=limits,
        headers=cluster.headers,
        verify=cluster.ssl_context,
    ) as http:
        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        started = time.time()
        batches = await asyncio.gather(*(_submitter(http, share) for share in shares))
        accepted = time.time()
    ids = {task_id for batch in batches for _, task_id in batch}
    running = wait_for(
        lambda: len(r := _running(cluster, ids)) == count and r, 120, f"{count} tasks running"
    )
    all_running = max(_epoch(t["startedAt"]) for t in running.values())
    elapsed = all_running - started
    return {
        "tasks": count,
        "submit_seconds": accepted - started,
        "all_running_seconds": elapsed,
        "tasks_per_second": count / elapsed,
    }


async def paced(cluster: Cluster, count: int, rate: float) -> dict[str, float]:
    async with httpx.AsyncClient(
        base_url=cluster.url, timeout=60, headers=cluster.headers, verify=cluster.ssl_context
    ) as http:
        start = time.monotonic()
        pending = []
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(_submit(http, TASK)))
        results = await asyncio.gather(*pending)
    submitted = {task_id: at for at, task_id in results}
    running = wait_for(
        lambda: len(r := _running(cluster, set(submitted))) == count and r,
        120,
        f"{count} paced tasks running",
    )
    latencies = [(_epoch(running[i]["startedAt"]) - submitted[i]) * 1000 for i in submitted]
    return {
        "tasks": count,
        "rate_per_second": rate,
        "p50_ms": statistics.median(latencies),
        "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


def _kill_all(cluster: Cluster) -> None:
    active = cluster.get("/v1/tasks", params={"state": ["TASK_RUNNING", "TASK_STAGING"]})
    for task in active["tasks"]:
        cluster.http.delete(f"/v1/tasks/{task['id']}")
    wait_for(
        lambda: (
            not cluster.get(
                "/v1/tasks", params={"state": ["TASK_RUNNING", "TASK_KILLING", "TASK_STAGING"]}
            )["tasks"]
        ),
        120,
        "every task to be killed",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=300)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--agents", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as root:
        cluster = Cluster(Path(root), heartbeat_interval=2.0)
        try:
            cluster.start_master()
            for index in range(args.agents):
                begin = 31000 + index * 250
                cluster.start_agent(
                    f"agent-{index + 1}",
                    AGENT_RESOURCES.format(begin=begin, end=begin + 249),
                    host=f"127.0.0.{index + 2}",
                )
            a = asyncio.run(burst(cluster, args.tasks))
            print(
                f"(a) burst: {a['tasks']} tasks accepted in {a['submit_seconds']:.2f} s, "
                f"all TASK_RUNNING after {a['all_running_seconds']:.2f} s "
                f"= {a['tasks_per_second']:.0f} tasks/s  (goal <= 10 s; Mesos 1.7 agent: "
                f"~30 s for 1,000 containers)"
            )
            _kill_all(cluster)
            b = asyncio.run(paced(cluster, args.paced, args.rate))
            print(
                f"(b) paced: {b['tasks']} tasks at {b['rate_per_second']:.0f}/s: "
                f"submit-to-RUNNING p50 {b['p50_ms']:.0f} ms, p90 {b['p90_ms']:.0f} ms, "
                f"p99 {b['p99_ms']:.0f} ms, max {b['max_ms']:.0f} ms  (goal p99 <= 250 ms; "
                f"Swarm 2015 p99 400 ms; Kubernetes SLO p99 <= 5 s)"
            )
            _kill_all(cluster)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
