"""The Metronome v1 API in-process: shapes, defaults, validation (422 with Metronome's paths),
404s and 409s, nothing half-written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers

JOB = {
    "id": "prod.example.app",
    "description": "Example Application",
    "labels": {"owner": "zeus"},
    "run": {
        "cmd": "echo hello",
        "cpus": 0.5,
        "mem": 64,
        "disk": 0,
        "env": {"MON": "test"},
        "placement": {"constraints": [{"attribute": "rack", "operator": "EQ", "value": "r2"}]},
        "restart": {"policy": "ON_FAILURE", "activeDeadlineSeconds": 120},
    },
}
SCHEDULE = {"id": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    with TestClient(app) as test_client:
        test_client.headers.update(auth_headers(tmp_path))
        yield test_client


def _details(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["message"] == "Object is not valid"
    return {d["path"]: d["errors"] for d in body["details"]}


def test_create_and_get_job_with_metronome_defaults(client: TestClient) -> None:
    created = client.post("/v1/jobs", json={"id": "hello", "run": {"cmd": "true"}})
    assert created.status_code == 201, created.text
    job = client.get("/v1/jobs/hello").json()
    assert job == {
        "id": "hello",
        "labels": {},
        "run": {
            "cpus": 1.0,
            "mem": 128.0,
            "disk": 0.0,
            "cmd": "true",
            "env": {},
            "placement": {"constraints": []},
            "artifacts": [],
            "maxLaunchDelay": 3600,
            "restart": {"policy": "NEVER"},
        },
    }
    assert client.get("/service/metronome/v1/jobs/hello").json() == job


def test_full_job_round_trips(client: TestClient) -> None:
    assert client.post("/v1/jobs", json=JOB).status_code == 201
    job = client.get("/v1/jobs/prod.example.app").json()
    assert job["run"]["placement"] == JOB["run"]["placement"]
    assert job["run"]["restart"] == {"policy": "ON_FAILURE", "activeDeadlineSeconds": 120}
    listed = client.get("/v1/jobs").json()
    assert [j["id"] for j in listed] == ["prod.example.app"]
    assert client.post("/v1/jobs", json=JOB).status_code == 409


def test_embeds(client: TestClient) -> None:
    client.post("/v1/jobs", json={**JOB, "schedules": [SCHEDULE]})
    job = client.get(
        "/v1/jobs/prod.example.app", params={"embed": "activeRuns,schedules,historySummary"}
    ).json()
    assert job["activeRuns"] == []
    assert job["historySummary"] == {
        "successCount": 0,
        "failureCount": 0,
        "lastSuccessAt": None,
        "lastFailureAt": None,
    }
    (schedule,) = job["schedules"]
    assert schedule["concurrencyPolicy"] == "ALLOW" and schedule["enabled"] is True
    assert schedule["startingDeadlineSeconds"] == 900
    assert schedule["nextRunAt"].endswith("+0000")
    history = client.get("/v1/jobs", params=[("embed", "history")]).json()[0]["history"]
    assert history["successfulFinishedRuns"] == [] and history["failedFinishedRuns"] == []
    bad = client.get("/v1/jobs", params={"embed": "everything"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ({"id": "Bad_Id", "run": {"cmd": "true"}}, "/id", "pattern"),
        ({"id": "-x", "run": {"cmd": "true"}}, "/id", "pattern"),
        ({"id": "a", "run": {"cmd": "true", "mem": 16}}, "/run/mem", "≥ 32"),
        ({"id": "a", "run": {"cmd": "true", "cpus": 0}}, "/run/cpus", "≥ 0.01"),
        ({"id": "a", "run": {"cpus": 1}}, "/run", "exactly one of cmd and args"),
        ({"id": "a", "run": {"cmd": "true"}, "bogus": 1}, "/bogus", "unknown field"),
        ({"id": "a", "run": {"cmd": "true", "bogus": 1}}, "/run/bogus", "unknown field"),
        (
            {
                "id": "a",
                "run": {
                    "cmd": "true",
                    "placement": {"constraints": [{"attribute": "x", "operator": "NEAR"}]},
                },
            },
            "/run/placement/constraints(0)/operator",
            "IS",
        ),
        (
            {
                "id": "a",
                "run": {
                    "cmd": "true",
                    "placement": {"constraints": [{"attribute": "x", "operator": "LIKE"}]},
                },
            },
            "/run/placement/constraints(0)",
            "requires a value",
        ),
        (
            {"id": "a", "run": {"cmd": "true", "volumes": [{"containerPath": "/x"}]}},
            "/run/volumes",
            "0",
        ),
        (
            {"id": "a", "run": {"cmd": "true", "artifacts": [{"uri": "ftp://x"}]}},
            "/run/artifacts(0)/uri",
            "http",
        ),
        (
            {"id": "a", "run": {"cmd": "true"}, "schedules": [{"id": "s", "cron": "99 * * * *"}]},
            "/schedules(0)/cron",
            "not a valid cron expression",
        ),
    ],
)
def test_invalid_jobs_get_422_with_field_paths(
    client: TestClient, body: dict[str, Any], path: str, fragment: str
) -> None:
    details = _details(client.post("/v1/jobs", json=body))
    assert path in details, details
    assert any(fragment in message for message in details[path]), details
    assert client.get("/v1/jobs").json() == [], "nothing half-written"


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "/" in _details(response)


@pytest.mark.parametrize(
    ("schedule", "path", "fragment"),
    [
        ({"id": "s", "cron": "* * *"}, "/cron", "expected 5 fields"),
        ({"id": "s", "cron": "* * * * *", "timezone": "Mars/Base"}, "/timezone", "No time zone"),
        ({"id": "S!", "cron": "* * * * *"}, "/id", "pattern"),
        (
            {"id": "s", "cron": "* * * * *", "concurrencyPolicy": "SOMETIMES"},
            "/concurrencyPolicy",
            "ALLOW",
        ),
        (
            {"id": "s", "cron": "* * * * *", "startingDeadlineSeconds": 0},
            "/startingDeadlineSeconds",
            "≥ 1",
        ),
        ({"id": "s"}, "/cron", "is required"),
    ],
)
def test_invalid_schedules(
    client: TestClient, schedule: dict[str, Any], path: str, fragment: str
) -> None:
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "true"}})
    details = _details(client.post("/v1/jobs/a/schedules", json=schedule))
    assert any(fragment in m for m in details.get(path, [])), details
    assert client.get("/v1/jobs/a/schedules").json() == []


def test_schedule_crud(client: TestClient) -> None:
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "true"}})
    created = client.post("/v1/jobs/a/schedules", json=SCHEDULE)
    assert created.status_code == 201, created.text
    assert client.post("/v1/jobs/a/schedules", json=SCHEDULE).status_code == 409
    changed = {**client.get("/v1/jobs/a/schedules/nightly").json(), "concurrencyPolicy": "FORBID"}
    updated = client.put("/v1/jobs/a/schedules/nightly", json=changed)
    assert updated.status_code == 200, updated.text
    assert updated.json()["concurrencyPolicy"] == "FORBID"
    assert client.put("/v1/jobs/a/schedules/other", json=changed).status_code == 422
    assert client.delete("/v1/jobs/a/schedules/nightly").status_code == 200
    missing = client.get("/v1/jobs/a/schedules/nightly")
    assert missing.status_code == 404
    assert missing.json() == {"message": "Schedule not found", "id": "nightly"}


def test_unknown_jobs_and_runs_are_404(client: TestClient) -> None:
    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404
    assert missing.json() == {"message": "Job not found", "id": "nope"}
    assert client.post("/v1/jobs/nope/runs").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404
    assert client.put("/v1/jobs/nope", json={"run": {"cmd": "true"}}).status_code == 404
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "true"}})
    run = client.get("/v1/jobs/a/runs/20200101000000abcde")
    assert run.status_code == 404 and run.json()["message"] == "Job Run not found"
    stop = client.post("/v1/jobs/a/runs/20200101000000abcde/actions/stop")
    assert stop.status_code == 404


def test_run_now_is_queued_with_reasons_and_delete_needs_stop(client: TestClient) -> None:
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "sleep 10", "cpus": 0.1, "mem": 32}})
    run = client.post("/v1/jobs/a/runs")
    assert run.status_code == 201, run.text
    body = run.json()
    assert set(body) == {"id", "jobId", "status", "createdAt", "completedAt", "tasks"}
    assert len(body["id"]) == 19 and body["id"][:14].isdigit()
    assert body["status"] in ("INITIAL", "STARTING")
    queue = client.get("/v1/queue").json()
    assert queue[0]["jobId"] == "a" and queue[0]["runs"][0]["runId"] == body["id"]
    runs = client.get("/v1/jobs/a/runs").json()
    assert [r["id"] for r in runs] == [body["id"]]
    refused = client.delete("/v1/jobs/a")
    assert refused.status_code == 409
    assert "stopCurrentJobRuns=true" in refused.json()["message"]
    assert client.delete("/v1/jobs/a", params={"stopCurrentJobRuns": "true"}).status_code == 200
    assert client.get("/v1/jobs/a").status_code == 404


def test_update_keeps_schedules_and_takes_id_from_path(client: TestClient) -> None:
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "true"}, "schedules": [SCHEDULE]})
    updated = client.put("/v1/jobs/a", json={"id": "ignored", "run": {"cmd": "false", "mem": 64}})
    assert updated.status_code == 200, updated.text
    job = client.get("/v1/jobs/a", params={"embed": "schedules"}).json()
    assert job["run"]["cmd"] == "false" and job["run"]["mem"] == 64
    assert [s["id"] for s in job["schedules"]] == ["nightly"]


def test_dependencies_must_exist_and_not_cycle(client: TestClient) -> None:
    client.post("/v1/jobs", json={"id": "a", "run": {"cmd": "true"}})
    unknown = client.post(
        "/v1/jobs", json={"id": "b", "run": {"cmd": "true"}, "dependencies": [{"id": "zz"}]}
    )
    assert "/dependencies(0)/id" in _details(unknown)
    ok = client.post(
        "/v1/jobs", json={"id": "b", "run": {"cmd": "true"}, "dependencies": [{"id": "a"}]}
    )
    assert ok.status_code == 201
    assert client.get("/v1/jobs/b").json()["dependencies"] == [{"id": "a"}]
    cycle = client.put("/v1/jobs/a", json={"run": {"cmd": "true"}, "dependencies": [{"id": "b"}]})
    assert any("cycle" in m for m in _details(cycle)["/dependencies"])
    itself = client.post(
        "/v1/jobs", json={"id": "c", "run": {"cmd": "true"}, "dependencies": [{"id": "c"}]}
    )
    assert "/dependencies" in _details(itself)
    parent_delete = client.delete("/v1/jobs/a")
    assert parent_delete.status_code == 409 and "dependency of b" in parent_delete.json()["message"]
