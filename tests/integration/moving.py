"""Shared by the drain and rebalance tests: agents on hosts of their own, a health-checked
HTTP service, and a sampler of its healthy instances."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from tessera.testing.cluster import Cluster

HEALTH = {
    "protocol": "MESOS_HTTP",
    "path": "/",
    "gracePeriodSeconds": 30,
    "intervalSeconds": 1,
    # Generous: a loaded machine must not make a check fail and the sample dip.
    "timeoutSeconds": 3,
    "delaySeconds": 0,
}
SERVER = "exec python3 -m http.server $PORT0 --bind 127.0.0.1"


def start_agents(cluster: Cluster, count: int) -> dict[str, str]:
    """Agents on hosts 127.0.0.1.., each with a port range of its own: host name -> id."""
    base = random.randrange(20000, 28000, 300)
    for n in range(1, count + 1):
        low = base + 100 * n
        cluster.start_agent(
            name=f"agent-{n}",
            host=f"127.0.0.{n}",
            resources=f"cpus:2;mem:2048;disk:1000;ports:[{low}-{low + 99}]",
        )
    return {a["hostname"]: a["id"] for a in cluster.get("/v1/agents")["agents"]}


def app_tasks(cluster: Cluster, app_id: str) -> list[dict[str, Any]]:
    return list(cluster.get(f"/v2/apps/{app_id}/tasks")["tasks"])


def healthy(task: dict[str, Any]) -> bool:
    results = task.get("healthCheckResults") or []
    return task["state"] == "TASK_RUNNING" and bool(results) and all(r["alive"] for r in results)


class Sampler:
    """Counts the app's healthy instances every 100 ms in a thread; keeps the fewest."""

    def __init__(self, cluster: Cluster, app_id: str) -> None:
        self.cluster, self.app_id = cluster, app_id
        self.lowest: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = sum(1 for t in app_tasks(self.cluster, self.app_id) if healthy(t))
            self.lowest = count if self.lowest is None else min(self.lowest, count)
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def agent(cluster: Cluster, agent_id: str) -> dict[str, Any]:
    return dict(cluster.get(f"/v1/agents/{agent_id}"))
