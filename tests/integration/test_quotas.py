"""Team quotas end to end: a real master and agent; a role's 1-cpu quota keeps a third
0.5-cpu instance queued with QuotaExceeded (a service, a job run, a native task), and
raising the quota places what waited. `tessera team create` makes a working team."""

from __future__ import annotations

from typing import Any

from tessera.testing.auth import login
from tessera.testing.cluster import Cluster, wait_for

SLEEP = "sleep 600"


def _put(cluster: Cluster, path: str, body: Any) -> Any:
    response = cluster.http.put(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _post(cluster: Cluster, path: str, body: Any = None) -> Any:
    response = cluster.http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _app_reasons(cluster: Cluster, app_id: str) -> dict[str, int]:
    for entry in cluster.get("/v2/queue")["queue"]:
        if entry["app"]["id"] == app_id:
            summary = entry["processedOffersSummary"]["rejectSummaryLastOffers"]
            return {r["reason"]: r["declined"] for r in summary}
    return {}


def _running(cluster: Cluster, app_id: str) -> int:
    tasks = cluster.get(f"/v2/apps/{app_id}/tasks")["tasks"]
    return sum(1 for task in tasks if task["state"] == "TASK_RUNNING")


def _job_reasons(cluster: Cluster, job_id: str) -> dict[str, int]:
    for entry in cluster.get("/v1/queue"):
        if entry["jobId"] == job_id and entry["runs"]:
            reasons: dict[str, int] = entry["runs"][0].get("queuedReasons", {})
            return reasons
    return {}


def test_a_quota_keeps_instances_queued_until_it_is_raised(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:4;mem:2048;disk:1000;ports:[31000-31010]")
    quota = _put(cluster, "/v1/quotas/team-a", {"cpus": 1})
    assert quota["limits"] == {"cpus": 1}

    # A service: two instances fit in the quota, the third waits (the API still says 201).
    app = {"id": "/team-a/web", "role": "team-a", "cmd": SLEEP, "cpus": 0.5, "mem": 32}
    _post(cluster, "/v2/apps", {**app, "instances": 3})
    wait_for(lambda: _running(cluster, "team-a/web") == 2, 30, "two instances running")
    reasons = wait_for(lambda: _app_reasons(cluster, "/team-a/web"), 10, "a queue reason")
    assert reasons.get("QuotaExceeded", 0) >= 1, reasons
    consumed = cluster.get("/v1/quotas/team-a")["consumed"]
    assert consumed["cpus"] == 1 and consumed["instances"] == 2 and consumed["apps"] == 1

    # A job run of the team waits the same way.
    job = {"id": "team-a.batch", "run": {"cmd": SLEEP, "cpus": 0.5, "mem": 32, "role": "team-a"}}
    _post(cluster, "/v1/jobs", job)
    _post(cluster, "/v1/jobs/team-a.batch/runs")
    job_reasons = wait_for(lambda: _job_reasons(cluster, "team-a.batch"), 10, "a job reason")
    assert "QuotaExceeded" in job_reasons, job_reasons

    # And a native one-off task in the team's group.
    task = cluster.launch(name="once", cmd=SLEEP, cpus=0.5, mem=32, group="/team-a")
    waiting = wait_for(lambda: cluster.task(task["id"]).get("queuedReasons"), 10, "a reason")
    assert "QuotaExceeded" in waiting, waiting
    assert cluster.task(task["id"])["state"] == "TASK_QUEUED"

    # Other roles are not limited by team-a's quota.
    other = cluster.launch(name="free", cmd=SLEEP, cpus=0.5, mem=32)
    cluster.wait_state(other["id"], "TASK_RUNNING")

    # A task of the team ends (scaled away with it; its deployment waits on the quota, so
    # force): the oldest waiting instance, the app's third, takes its room.
    tasks = cluster.get("/v2/apps/team-a/web/tasks")["tasks"]
    running = [t["id"] for t in tasks if t["state"] == "TASK_RUNNING"]
    killed = cluster.http.delete(f"/v2/apps/team-a/web/tasks/{running[0]}?scale=true&force=true")
    assert killed.status_code == 200, killed.text
    wait_for(
        lambda: not _app_reasons(cluster, "/team-a/web") and _running(cluster, "team-a/web") == 2,
        30,
        "the waiting instance placed in the freed room",
    )
    assert cluster.get("/v1/quotas/team-a")["consumed"]["instances"] == 2
    assert cluster.task(task["id"])["state"] == "TASK_QUEUED"

    # Raising the quota places everything that waited.
    _put(cluster, "/v1/quotas/team-a", {"cpus": 2})
    cluster.wait_state(task["id"], "TASK_RUNNING")
    wait_for(lambda: not _job_reasons(cluster, "team-a.batch"), 30, "the job run placed")
    consumed = cluster.get("/v1/quotas/team-a")["consumed"]
    assert consumed["cpus"] == 2 and consumed["instances"] == 4 and consumed["apps"] == 2
    listed = cluster.cli("quota", "list")
    assert listed.returncode == 0 and "team-a" in listed.stdout, listed.stderr


def test_team_create_makes_a_working_team_and_can_run_again(cluster: Cluster) -> None:
    args = ("team", "create", "team-x", "--cpus", "2", "--mem", "1024", "--instances", "4")
    made = cluster.cli(*args)
    assert made.returncode == 0, made.stderr
    again = cluster.cli(*args)
    assert again.returncode == 0, again.stderr
    assert cluster.get("/v2/groups/team-x")["enforceRole"] is True
    limits = cluster.get("/v1/quotas/team-x")["limits"]
    assert limits == {"cpus": 2, "mem": 1024, "instances": 4}

    # A developer of the team may deploy under /team-x and nowhere else.
    answer = cluster.http.put("/acs/api/v1/users/bob", json={"password": "bob-password-1"})
    assert answer.status_code == 201, answer.text
    member = cluster.http.put("/acs/api/v1/groups/team-x-developers/users/bob")
    assert member.status_code == 204, member.text
    bob = login(cluster.http, "bob", "bob-password-1")
    app = {"cmd": SLEEP, "cpus": 0.1, "mem": 32, "instances": 0}
    mine = cluster.http.post("/v2/apps", json={"id": "/team-x/web", **app}, headers=bob)
    assert mine.status_code == 201, mine.text
    theirs = cluster.http.post("/v2/apps", json={"id": "/team-y/web", **app}, headers=bob)
    assert theirs.status_code == 403, theirs.text
    assert cluster.http.get("/v1/quotas/team-x", headers=bob).status_code == 200
    assert cluster.http.put("/v1/quotas/team-x", json={}, headers=bob).status_code == 403

    listed = cluster.cli("team", "list")
    assert listed.returncode == 0 and "team-x" in listed.stdout, listed.stderr
