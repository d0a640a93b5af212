"""Services benchmark: 200 Marathon apps x 5 instances on 8 local agents, through /v2/apps.

Each app runs `sleep 3600` with a COMMAND health check (every 5 s, first after 1 s).
Reports the time from the first POST until all 1,000 instances are healthy, the latency
of `GET /v2/apps?embed=apps.tasks` at that size (p50/p99 of 100 calls), and the master's
memory (RSS). Goals (issue 4): all healthy within 60 s; GET p99 <= 100 ms.

Run: .venv/bin/python bench/services.py [--apps 200] [--instances 5] [--agents 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tessera.testing.cluster import Cluster, wait_for

AGENT_RESOURCES = "cpus:8;mem:8192;disk:1000;ports:[{begin}-{end}]"


def app(index: int, instances: int) -> dict[str, Any]:
    return {
        "id": f"/bench/app-{index:03d}",
        "cmd": "sleep 3600",
        "instances": instances,
        "cpus": 0.01,
        "mem": 8,
        "portDefinitions": [],
        "healthChecks": [
            {
                "protocol": "COMMAND",
                "command": {"value": "true"},
                "gracePeriodSeconds": 60,
                "intervalSeconds": 5,
                "timeoutSeconds": 5,
                "delaySeconds": 1,
            }
        ],
    }


async def deploy(cluster: Cluster, apps: int, instances: int, clients: int = 16) -> float:
    """POST every app (a fixed pool of clients); returns how long the POSTs took."""
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=cluster.url,
        timeout=60,
        limits=limits,
        headers=cluster.headers,
        verify=cluster.ssl_context,
    ) as http:

        async def post_share(indexes: list[int]) -> None:
            for index in indexes:
                response = await http.post("/v2/apps", json=app(index, instances))
                response.raise_for_status()

        started = time.monotonic()
        shares = [list(range(apps))[i::clients] for i in range(clients)]
        await asyncio.gather(*(post_share(share) for share in shares))
        return time.monotonic() - started


def healthy(cluster: Cluster) -> int:
    return sum(a["tasksHealthy"] for a in cluster.get("/v2/apps")["apps"])


def get_latencies(cluster: Cluster, calls: int = 100) -> list[float]:
    latencies = []
    with httpx.Client(
        base_url=cluster.url, timeout=30, headers=cluster.headers, verify=cluster.ssl_context
    ) as http:
        for _ in range(calls):
            started = time.perf_counter()
            response = http.get("/v2/apps", params={"embed": "apps.tasks"})
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--agents", type=int, default=8)
    args = parser.parse_args()
    total = args.apps * args.instances
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as root:
        cluster = Cluster(Path(root), heartbeat_interval=2.0)
        try:
            cluster.start_master()
            for index in range(args.agents):
                begin = 31000 + index * 100
                cluster.start_agent(
                    f"agent-{index + 1}",
                    AGENT_RESOURCES.format(begin=begin, end=begin + 99),
                    host=f"127.0.0.{index + 2}",
                )
            started = time.monotonic()
            posting = asyncio.run(deploy(cluster, args.apps, args.instances))
            wait_for(lambda: healthy(cluster) == total, 300, f"{total} healthy instances")
            all_healthy = time.monotonic() - started
            wait_for(lambda: not cluster.get("/v2/deployments"), 60, "deployments to finish")
            latencies = get_latencies(cluster)
            assert cluster.master is not None
            rss = psutil.Process(cluster.master.pid).memory_info().rss / 2**20
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            print(
                f"{args.apps} apps x {args.instances} on {args.agents} agents: POSTs took "
                f"{posting:.1f} s; all {total} instances healthy after {all_healthy:.1f} s "
                f"(goal <= 60 s)"
            )
            print(
                f"GET /v2/apps?embed=apps.tasks: p50 {statistics.median(latencies):.0f} ms, "
                f"p99 {p99:.0f} ms (goal <= 100 ms); master RSS {rss:.0f} MiB"
            )
            cluster.http.delete("/v2/groups/bench", params={"force": "true"})
            wait_for(lambda: not cluster.get("/v2/deployments"), 120, "the removal")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
