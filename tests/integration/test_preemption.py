"""Priorities and fairness through the running master: a high-priority app preempts a
low-priority one (the victim ends TASK_KILLED with a preemption reason and its app queues a
replacement), and two roles that compete for a full cluster share it by weighted DRF."""

from __future__ import annotations

from typing import Any

from tessera.testing.cluster import Cluster, wait_for

SLEEP = "sleep 600"


def _post(cluster: Cluster, path: str, body: Any) -> Any:
    response = cluster.http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _tasks(cluster: Cluster, app_id: str) -> list[dict[str, Any]]:
    return [t for t in cluster.get("/v1/tasks")["tasks"] if t["appId"] == app_id]


def _running(cluster: Cluster, app_id: str) -> int:
    return sum(1 for t in _tasks(cluster, app_id) if t["state"] == "TASK_RUNNING")


def test_a_higher_priority_app_preempts_a_lower_one(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:2;mem:1024;disk:100;ports:[31000-31010]")
    low = {"id": "/batch/low", "cmd": SLEEP, "cpus": 1, "mem": 32, "instances": 2}
    _post(cluster, "/v2/apps", low)
    wait_for(lambda: _running(cluster, "/batch/low") == 2, 30, "the low app running")

    high = {"id": "/prod/high", "cmd": SLEEP, "cpus": 1, "mem": 32, "instances": 1}
    _post(cluster, "/v2/apps", {**high, "priority": 10})
    wait_for(lambda: _running(cluster, "/prod/high") == 1, 30, "the high app running")

    victims = [t for t in _tasks(cluster, "/batch/low") if t["state"] == "TASK_KILLED"]
    assert len(victims) == 1, victims
    assert victims[0]["reason"] == "REASON_CONTAINER_PREEMPTED"
    assert "preempted for /prod/high" in victims[0]["message"]
    # The low app still wants two: its replacement waits in the queue for room.
    assert _running(cluster, "/batch/low") == 1
    queue = wait_for(
        lambda: [e for e in cluster.get("/v2/queue")["queue"] if e["app"]["id"] == "/batch/low"],
        10,
        "the replacement in the queue",
    )
    assert queue[0]["count"] == 1
    # An equal priority never preempts: a second high-priority app waits instead.
    _post(cluster, "/v2/apps", {**high, "id": "/prod/other", "priority": 0})
    wait_for(
        lambda: any(e["app"]["id"] == "/prod/other" for e in cluster.get("/v2/queue")["queue"]),
        10,
        "the equal-priority app queued",
    )
    assert _running(cluster, "/batch/low") == 1 and _running(cluster, "/prod/high") == 1


def test_two_roles_share_a_full_cluster_by_weighted_drf(cluster: Cluster) -> None:
    # Both teams ask for the whole cluster before any agent exists; team-a weighs 3.
    assert cluster.http.put("/v1/quotas/team-a", json={"weight": 3}).status_code == 200
    for team in ("team-a", "team-b"):
        app = {"id": f"/{team}/web", "role": team, "cmd": SLEEP, "cpus": 0.5, "mem": 32}
        _post(cluster, "/v2/apps", {**app, "instances": 8})
    cluster.start_agent(resources="cpus:4;mem:2048;disk:100;ports:[31000-31010]")

    def shares() -> tuple[int, int] | None:
        counts = (_running(cluster, "/team-a/web"), _running(cluster, "/team-b/web"))
        return counts if sum(counts) == 8 else None

    assert wait_for(shares, 30, "the cluster full") == (6, 2)
