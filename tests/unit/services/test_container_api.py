"""Container apps through the Marathon API in-process, with agents speaking the real agent
protocol in-process (testing.channel_link): 422s with field paths, a bridged app shown back
in Marathon's form, its launch (container spec and host ports), the container IP in task
JSON, an image pull failure in the app's lastTaskFailure, /v2/queue and the events, and
agents without a runtime counted as UnsupportedContainerRuntime."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.model.container import ContainerSpec
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers
from tessera.testing.channel_link import AgentEnd, connect_agent

T = TypeVar("T")

BRIDGED_APP = {
    "id": "/web",
    "instances": 1,
    "cpus": 0.1,
    "mem": 32,
    "container": {
        "type": "DOCKER",
        "docker": {"image": "127.0.0.1:5000/team/app:1.0", "network": "BRIDGE"},
        "portMappings": [],
    },
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    with TestClient(app) as test_client:
        test_client.headers.update(auth_headers(tmp_path))
        yield test_client


def _eventually(probe: Callable[[], T | None], what: str, timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _agent(
    client: TestClient, agent_id: str, containers: dict[str, Any] | None
) -> Iterator[AgentEnd]:
    with connect_agent(client) as socket:
        registration: dict[str, Any] = {
            "type": "register",
            "agent_id": agent_id,
            "hostname": "127.0.0.1",
            "resources": {"cpus": 4, "mem": 4096, "disk": 0, "gpus": 0, "ports": [[31000, 31009]]},
            "attributes": {},
            "tasks": [],
        }
        if containers is not None:
            registration["containers"] = containers
        socket.send_json(registration)
        assert socket.receive_json()["type"] == "registered"
        yield socket


def _status(socket: AgentEnd, task_id: str, state: str, **fields: Any) -> None:
    update = {
        "type": "status",
        "uuid": str(uuid.uuid4()),
        "task_id": task_id,
        "state": state,
        "timestamp": time.time(),
        **fields,
    }
    socket.send_json(update)
    ack = socket.receive_json()
    assert ack == {"type": "ack", "uuid": update["uuid"], "task_id": task_id}


def _queue(client: TestClient) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = client.get("/v2/queue").json()["queue"]
    return entries


def test_invalid_container_is_a_422_with_marathon_paths(client: TestClient) -> None:
    body = {
        "id": "/web",
        "container": {
            "type": "DOCKER",
            "docker": {
                "image": "Team/App",
                "parameters": [{"key": "label", "value": "a=b"}, {"key": "pid", "value": "host"}],
            },
            "portMappings": [{"containerPort": 80, "hostPort": 70000}],
        },
        "networks": [{"mode": "container/bridge"}],
    }
    response = client.post("/v2/apps", json=body)
    assert response.status_code == 422, response.text
    details = {d["path"]: d["errors"] for d in response.json()["details"]}
    assert set(details) == {
        "/container/docker/image",
        "/container/docker/parameters/1/key",
        "/container/portMappings/0/hostPort",
    }
    assert details["/container/docker/parameters/1/key"] == [
        "parameter 'pid' is not supported; supported: label, env, user, workdir, shm-size, hostname"
    ]
    grouped = client.post("/v2/groups", json={"id": "/shop", "apps": [{**body, "id": "web"}]})
    assert grouped.status_code == 422
    assert "/apps/0/container/docker/image" in {d["path"] for d in grouped.json()["details"]}


def test_bridged_app_is_shown_in_the_current_form(client: TestClient) -> None:
    body = {
        **BRIDGED_APP,
        "container": {
            **BRIDGED_APP["container"],  # type: ignore[dict-item]
            "docker": {
                **BRIDGED_APP["container"]["docker"],  # type: ignore[index]
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "http"}],
            },
        },
        "instances": 0,
    }
    del body["container"]["portMappings"]  # type: ignore[attr-defined]
    created = client.post("/v2/apps", json=body)
    assert created.status_code == 201, created.text
    shown = client.get("/v2/apps/web").json()["app"]
    assert shown["networks"] == [{"mode": "container/bridge"}]
    assert shown["portDefinitions"] == []
    assert shown["container"]["docker"] == {
        "image": "127.0.0.1:5000/team/app:1.0",
        "forcePullImage": False,
        "privileged": False,
        "parameters": [],
    }
    (mapping,) = shown["container"]["portMappings"]
    assert mapping["containerPort"] == 8080 and mapping["name"] == "http"
    assert mapping["servicePort"] >= 10000
    # What GET shows can be PUT back unchanged.
    put = client.put("/v2/apps/web", params={"force": "true"}, json=shown)
    assert put.status_code == 200, put.text
    again = client.get("/v2/apps/web").json()["app"]
    assert again["container"] == shown["container"] and again["networks"] == shown["networks"]


def test_agents_without_a_runtime_count_as_unsupported(client: TestClient) -> None:
    with _agent(client, "plain", None):
        body = {
            "id": "/busy",
            "cpus": 0.1,
            "mem": 32,
            "container": {"docker": {"image": "busybox"}},
        }
        assert client.post("/v2/apps", json=body).status_code == 201

        def reasons() -> list[dict[str, Any]] | None:
            entries = _queue(client)
            if not entries:
                return None
            summary: list[dict[str, Any]] = entries[0]["processedOffersSummary"][
                "rejectSummaryLastOffers"
            ]
            return summary or None

        found = _eventually(reasons, "the queue's reasons")
        assert found == [{"reason": "UnsupportedContainerRuntime", "declined": 1, "processed": 1}]
        agents = client.get("/v1/agents").json()
        listed = agents["agents"] if isinstance(agents, dict) else agents
        assert [a["containers"] for a in listed] == [None]


def test_bridged_task_launch_ip_and_pull_failure(client: TestClient) -> None:
    runtime = {"runtime": "runc 1.1.5", "bridge": True, "privileged": False}
    events = client.app.state.services.events.subscribe(["status_update_event"])  # type: ignore[attr-defined]
    with _agent(client, "runc", runtime) as socket:
        body = {
            **BRIDGED_APP,
            "container": {
                "type": "DOCKER",
                "docker": {"image": "127.0.0.1:5000/team/app:1.0"},
                "portMappings": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 53, "hostPort": 31005, "protocol": "udp"},
                ],
            },
            "networks": [{"mode": "container/bridge"}],
        }
        assert client.post("/v2/apps", json=body).status_code == 201, body

        def staged() -> list[dict[str, Any]] | None:
            tasks: list[dict[str, Any]] = client.get("/v2/apps/web/tasks").json()["tasks"]
            return tasks or None

        (task,) = _eventually(staged, "the task to be placed")
        launch = socket.receive_json()
        assert launch["type"] == "launch"
        payload = launch["task"]
        container = ContainerSpec.from_json(payload["spec"]["container"])
        assert container.image == "127.0.0.1:5000/team/app:1.0" and container.bridged
        assert [m.container_port for m in container.port_mappings] == [80, 53]
        assert payload["ports"][1] == 31005 and 31000 <= payload["ports"][0] <= 31009
        assert task["ports"] == payload["ports"]

        _status(socket, task["id"], "TASK_RUNNING", ip_addresses=["172.31.254.7"])
        address = [{"ipAddress": "172.31.254.7", "protocol": "IPv4"}]

        def running() -> dict[str, Any] | None:
            (shown,) = client.get("/v2/apps/web/tasks").json()["tasks"]
            return shown if shown["state"] == "TASK_RUNNING" else None

        shown = _eventually(running, "TASK_RUNNING")
        assert shown["ipAddresses"] == address
        assert len(shown["servicePorts"]) == 2 and min(shown["servicePorts"]) >= 10000
        (listed,) = client.get("/v2/tasks").json()["tasks"]
        assert listed["ipAddresses"] == address
        embedded = client.get("/v2/apps", params={"embed": "apps.tasks"}).json()["apps"]
        assert embedded[0]["tasks"][0]["ipAddresses"] == address

        message = "image pull failed: 127.0.0.1:5000/team/app:1.0: manifest unknown"
        _status(
            socket,
            task["id"],
            "TASK_FAILED",
            reason="REASON_CONTAINER_LAUNCH_FAILED",
            message=message,
        )

        def failure() -> dict[str, Any] | None:
            app = client.get("/v2/apps/web", params={"embed": "app.lastTaskFailure"}).json()
            found: dict[str, Any] | None = app["app"].get("lastTaskFailure")
            return found

        last = _eventually(failure, "the app's lastTaskFailure")
        assert last["message"] == message and last["state"] == "TASK_FAILED"
        entry = _eventually(lambda: _queue(client), "the app in /v2/queue")[0]
        assert entry["app"]["lastTaskFailure"]["message"] == message
        seen = []
        while not events.queue.empty():
            seen.append(events.queue.get_nowait())
        failed = [e for e in seen if e["taskStatus"] == "TASK_FAILED"]
        assert failed and failed[0]["message"] == message
        assert any(e["ipAddresses"] == address for e in seen if e["taskStatus"] == "TASK_RUNNING")
