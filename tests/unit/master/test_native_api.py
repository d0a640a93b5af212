"""The native API in-process: validation in Marathon's error shape, 404s, queueing."""

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


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    with TestClient(app) as test_client:
        test_client.headers.update(auth_headers(tmp_path))
        yield test_client


def _details(response: Any) -> dict[str, list[str]]:
    body = response.json()
    assert body["message"] == "Object is not valid"
    return {d["path"]: d["errors"] for d in body["details"]}


def test_ping_and_openapi(client: TestClient) -> None:
    assert client.get("/ping").text == "pong"
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/tasks" in paths and "/v1/cluster/summary" in paths


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ({"cmd": "true", "cpus": -1}, "/cpus", "must be ≥ 0.001"),
        ({"cmd": "true", "mem": 0.5}, "/mem", "must be ≥ 1"),
        ({"cmd": "true", "bogus": 1}, "/bogus", "unknown field"),
        ({"cmd": "true", "portDefinitions": [{"port": 70000}]}, "/portDefinitions/0/port", "≤"),
        ({"cmd": "true", "name": "Bad Name"}, "/name", "pattern"),
        ({"cpus": 1}, "/", "exactly one of cmd and args"),
        ({"cmd": "true", "env": {"1X": "y"}}, "/", "invalid variable name"),
    ],
)
def test_invalid_launch_is_422_with_path(
    client: TestClient, body: dict[str, Any], path: str, fragment: str
) -> None:
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 422
    details = _details(response)
    assert path in details, details
    assert any(fragment in error for error in details[path]), details


def test_malformed_json_is_422_not_500(client: TestClient) -> None:
    response = client.post(
        "/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "invalid JSON" in str(response.json()["details"])


def test_unknown_ids_are_404(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/tasks/nope"),
        ("DELETE", "/v1/tasks/nope"),
        ("GET", "/v1/agents/nope"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert "does not exist" in response.json()["message"]


def test_launch_without_agents_stays_queued_and_can_be_killed(client: TestClient) -> None:
    created = client.post("/v1/tasks", json={"name": "shop.web", "cmd": "sleep 1"})
    assert created.status_code == 201
    task = created.json()
    assert task["id"].startswith("shop-web.")
    assert task["state"] == "TASK_QUEUED"
    listed = client.get("/v1/tasks", params={"state": "TASK_QUEUED"}).json()["tasks"]
    assert [t["id"] for t in listed] == [task["id"]]
    killed = client.delete(f"/v1/tasks/{task['id']}").json()
    assert killed["state"] == "TASK_KILLED"
    assert client.get("/v1/tasks", params={"state": "TASK_QUEUED"}).json()["tasks"] == []


def test_bad_state_filter_is_422(client: TestClient) -> None:
    response = client.get("/v1/tasks", params={"state": "TASK_BANANA"})
    assert response.status_code == 422
    assert "/state/0" in _details(response)


def test_summary_empty_cluster(client: TestClient) -> None:
    summary = client.get("/v1/cluster/summary").json()
    assert summary["capacity"]["cpus"] == 0
    assert summary["free"] == summary["capacity"]
