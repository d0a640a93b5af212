"""One-off container tasks through the native API: the container is checked with Marathon's
paths and carried in the task spec; bridged tasks ask for one host port per mapping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def test_a_container_task_needs_no_command(client: TestClient) -> None:
    body = {
        "name": "web",
        "container": {
            "type": "MESOS",
            "docker": {"image": "busybox:1.36", "forcePullImage": True},
            "portMappings": [{"containerPort": 80}, {"containerPort": 53, "hostPort": 31053}],
        },
        "networks": [{"mode": "container/bridge"}],
    }
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["image"] == "busybox:1.36" and view["cmd"] is None
    assert [p["port"] for p in view["portDefinitions"]] == [0, 31053]
    master = client.app.state.master  # type: ignore[attr-defined]
    spec = master.state.tasks[view["id"]].spec
    assert spec.container is not None and spec.container.bridged and spec.container.force_pull
    assert spec.require_ports


def test_invalid_container_tasks_get_field_paths(client: TestClient) -> None:
    bad = {"name": "web", "container": {"docker": {"image": "Busy Box"}}}
    response = client.post("/v1/tasks", json=bad)
    assert response.status_code == 422
    assert [d["path"] for d in response.json()["details"]] == ["/container/docker/image"]
    imageless = client.post("/v1/tasks", json={"name": "web", "container": {"type": "MESOS"}})
    assert imageless.status_code == 422
    assert imageless.json()["details"][0]["path"] == "/container/docker/image"
    nothing = client.post("/v1/tasks", json={"name": "web"})
    assert nothing.status_code == 422
