"""The Marathon v2 API in-process (no agents): shapes, validation, 404 and 409."""

from __future__ import annotations

import time
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
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["message"] == "Object is not valid"
    return {d["path"]: d["errors"] for d in body["details"]}


def test_create_returns_the_app_with_defaults_and_headers(client: TestClient) -> None:
    response = client.post("/v2/apps", json={"id": "shop/web", "cmd": "sleep 60"})
    assert response.status_code == 201
    app = response.json()
    deployment_id = response.headers["Marathon-Deployment-Id"]
    assert response.headers["Location"] == "/v2/apps/shop/web"
    assert app["id"] == "/shop/web"
    assert (app["cpus"], app["mem"], app["disk"], app["gpus"], app["instances"]) == (
        1.0,
        128.0,
        0.0,
        0,
        1,
    )
    assert app["backoffSeconds"] == 1 and app["backoffFactor"] == 1.15
    assert app["maxLaunchDelaySeconds"] == 300
    assert app["upgradeStrategy"]["minimumHealthCapacity"] == 1.0
    assert app["upgradeStrategy"]["maximumOverCapacity"] == 1.0
    assert "progressDeadlineSeconds" not in app["upgradeStrategy"]  # shown only when set
    assert app["killSelection"] == "YOUNGEST_FIRST"
    # port 0 gets a cluster-unique service port, as Marathon assigns them
    assert app["portDefinitions"] == [{"port": 10000, "protocol": "tcp", "name": "default"}]
    assert app["versionInfo"]["lastConfigChangeAt"] == app["version"]
    assert app["deployments"] == [{"id": deployment_id}]
    assert app["tasksRunning"] == 0
    listed = client.get("/v2/apps").json()["apps"]
    assert [a["id"] for a in listed] == ["/shop/web"]
    shown = client.get("/v2/apps/shop/web").json()["app"]
    assert shown["tasks"] == [] and shown["version"] == app["version"]


def test_invalid_definitions_name_every_field(client: TestClient) -> None:
    body = {
        "id": "Bad_Id",
        "cmd": "x",
        "args": ["y"],
        "cpus": -1,
        "mem": 1e12,
        "instances": -2,
        "constraints": [["hostname", "NEAR"]],
        "portDefinitions": [{"name": "http"}, {"name": "http"}],
        "healthChecks": [{"protocol": "HTTP", "portIndex": 5}],
        "upgradeStrategy": {"minimumHealthCapacity": 2},
        "killSelection": "RANDOM",
        "surprise": True,
    }
    details = _details(client.post("/v2/apps", json=body))
    assert "/id" in details
    assert details["/"] == [
        "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'."
    ]
    assert details["/cpus"] == ["must be ≥ 0.001"]
    assert "/mem" in details and details["/instances"] == ["must be ≥ 0"]
    assert "unknown operator 'NEAR'" in details["/constraints/0"][0]
    assert details["/portDefinitions"] == ["Port names must be unique."]
    assert "/healthChecks/0/portIndex" in details
    assert "/upgradeStrategy/minimumHealthCapacity" in details
    assert "/killSelection" in details and details["/surprise"] == ["unknown field"]
    assert client.get("/v2/apps").json()["apps"] == []


def test_bad_json_and_missing_body_are_422(client: TestClient) -> None:
    response = client.post(
        "/v2/apps", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert client.post("/v2/apps").status_code == 422
    assert client.put("/v2/apps/x", json=[1, 2]).status_code == 422


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/v2/apps/nope").json() == {"message": "App '/nope' does not exist"}
    for method, path in [
        ("GET", "/v2/apps/nope"),
        ("DELETE", "/v2/apps/nope"),
        ("PATCH", "/v2/apps/nope"),
        ("POST", "/v2/apps/nope/restart"),
        ("GET", "/v2/apps/nope/tasks"),
        ("GET", "/v2/apps/nope/versions"),
        ("DELETE", "/v2/apps/nope/tasks/nope.1"),
        ("GET", "/v2/groups/nope"),
        ("DELETE", "/v2/deployments/nope"),
        ("DELETE", "/v2/queue/nope/delay"),
    ]:
        response = client.request(method, path, json={"instances": 1})
        assert response.status_code == 404, (method, path, response.text)


def test_second_change_conflicts_unless_forced(client: TestClient) -> None:
    created = client.post("/v2/apps", json={"id": "/web", "cmd": "sleep 60", "instances": 2})
    first = created.headers["Marathon-Deployment-Id"]
    blocked = client.put("/v2/apps/web", json={"instances": 3})
    assert blocked.status_code == 409
    assert blocked.json()["deployments"] == [{"id": first}]
    assert first in blocked.json()["message"]
    assert client.post("/v2/apps", json={"id": "/web", "cmd": "x"}).status_code == 409
    forced = client.put("/v2/apps/web?force=true", json={"instances": 3})
    assert forced.status_code == 200
    assert forced.json()["deploymentId"] == forced.headers["Marathon-Deployment-Id"]
    running = client.get("/v2/deployments").json()
    assert [d["id"] for d in running] == [forced.json()["deploymentId"]]
    assert running[0]["steps"] == [{"actions": [{"action": "ScaleApplication", "app": "/web"}]}]
    app = client.get("/v2/apps/web").json()["app"]
    assert app["instances"] == 3
    # a scale keeps the config version
    assert app["versionInfo"]["lastConfigChangeAt"] != app["version"]


def test_partial_update_keeps_other_fields_and_versions_are_kept(client: TestClient) -> None:
    client.post("/v2/apps", json={"id": "/web", "cmd": "sleep 60", "env": {"A": "1"}})
    client.put("/v2/apps/web?force=true", json={"cmd": "sleep 61"})
    app = client.get("/v2/apps/web").json()["app"]
    assert app["cmd"] == "sleep 61" and app["env"] == {"A": "1"}
    versions = client.get("/v2/apps/web/versions").json()["versions"]
    assert len(versions) == 2 and versions[0] == app["version"]
    old = client.get(f"/v2/apps/web/versions/{versions[1]}").json()
    assert old["cmd"] == "sleep 60"
    back = client.put("/v2/apps/web?force=true", json={"version": versions[1]})
    assert back.status_code == 200
    assert client.get("/v2/apps/web").json()["app"]["cmd"] == "sleep 60"
    assert client.put("/v2/apps/web?force=true", json={"version": "1999"}).status_code == 404


def test_rollback_and_forced_stop_of_a_deployment(client: TestClient) -> None:
    client.post("/v2/apps", json={"id": "/web", "cmd": "sleep 60"})
    first = client.get("/v2/deployments").json()[0]["id"]
    stopped = client.delete(f"/v2/deployments/{first}?force=true")
    assert stopped.status_code == 202
    assert client.get("/v2/deployments").json() == []
    change = client.put("/v2/apps/web", json={"cmd": "sleep 99"}).json()
    rollback = client.delete(f"/v2/deployments/{change['deploymentId']}")
    assert rollback.status_code == 200
    assert rollback.json()["deploymentId"] != change["deploymentId"]
    assert client.get("/v2/apps/web").json()["app"]["cmd"] == "sleep 60"


def test_groups_with_dependencies_deploy_in_order(client: TestClient) -> None:
    group = {
        "id": "/shop",
        "apps": [
            {"id": "db", "cmd": "sleep 60"},
            {"id": "api", "cmd": "sleep 60", "dependencies": ["db"]},
            {"id": "web", "cmd": "sleep 60", "dependencies": ["/shop/api"]},
        ],
    }
    created = client.post("/v2/groups", json=group)
    assert created.status_code == 201, created.text
    plan = client.get("/v2/deployments").json()[0]
    scale_steps = [
        [a["app"] for a in step["actions"]]
        for step in plan["steps"]
        if step["actions"][0]["action"] == "ScaleApplication"
    ]
    assert scale_steps == [["/shop/db"], ["/shop/api"], ["/shop/web"]]
    tree = client.get("/v2/groups").json()
    assert [g["id"] for g in tree["groups"]] == ["/shop"]
    assert sorted(a["id"] for a in tree["groups"][0]["apps"]) == [
        "/shop/api",
        "/shop/db",
        "/shop/web",
    ]
    assert client.post("/v2/groups", json=group).status_code == 409
    in_group = client.get("/v2/apps/shop/*").json()["*"]
    assert [a["id"] for a in in_group] == ["/shop/api", "/shop/db", "/shop/web"]
    scaled = client.put("/v2/groups/shop?force=true", json={"scaleBy": 2})
    assert scaled.status_code == 200
    assert client.get("/v2/apps/shop/web").json()["app"]["instances"] == 2


def test_cyclic_dependencies_are_rejected(client: TestClient) -> None:
    group = {
        "id": "/loop",
        "apps": [
            {"id": "a", "cmd": "x", "dependencies": ["b"]},
            {"id": "b", "cmd": "x", "dependencies": ["a"]},
        ],
    }
    details = _details(client.post("/v2/groups", json=group))
    assert "cyclic" in details["/dependencies"][0]


def test_info_leader_ping_and_dcos_prefixes(client: TestClient) -> None:
    info = client.get("/v2/info").json()
    assert info["name"] == "marathon" and info["elected"] is True
    assert client.get("/v2/leader").json()["leader"]
    for prefix in ("", "/marathon", "/service/marathon"):
        assert client.get(f"{prefix}/ping").text == "pong"
        assert client.get(f"{prefix}/v2/apps").json() == {"apps": []}


def test_container_apps_are_stored_and_wait_with_a_reason(client: TestClient) -> None:
    body = {"id": "/nginx", "container": {"type": "DOCKER", "docker": {"image": "nginx"}}}
    assert client.post("/v2/apps", json=body).status_code == 201
    assert client.get("/v2/apps/nginx").json()["app"]["container"]["docker"]["image"] == "nginx"

    def queued() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = client.get("/v2/queue").json()["queue"]
        return entries

    deadline = time.monotonic() + 5
    while not queued() and time.monotonic() < deadline:
        time.sleep(0.05)
    (entry,) = queued()
    assert entry["app"]["id"] == "/nginx" and entry["count"] == 1
    # No agent at all: nothing turned it down (agents without a runtime count as
    # UnsupportedContainerRuntime, see tests/unit/services/test_container_api.py).
    assert entry["processedOffersSummary"]["rejectSummaryLastOffers"] == []


GARBAGE = [
    "",
    "[]",
    "1",
    '"x"',
    "null",
    "{}",
    '{"id": 5}',
    '{"id": "/a", "cmd": 5}',
    '{"apps": 5}',
    '{"groups": [5]}',
    '{"instances": "x"}',
    '{"scaleBy": "x"}',
    '{"version": 5}',
    '{"ids": "x"}',
    '[{"id": "/a", "cmd": "x"}, 5]',
    '{"id": "/a", "cmd": "x", "env": {"A": {"secret": "s"}}}',
    '{"id": "/a", "cmd": "x", "portDefinitions": [{"port": "80"}]}',
    '{"id": "/a", "cmd": "x", "healthChecks": "x"}',
    '{"id": "/a", "cmd": "x", "upgradeStrategy": [], "unreachableStrategy": 5}',
    '{"id": "/a", "cmd": "x", "constraints": [["hostname"]], "dependencies": [5]}',
    '{"id": "/a", "cmd": "x", "cpus": NaN}',
]
WRITES = [
    ("POST", "/v2/apps"),
    ("PUT", "/v2/apps"),
    ("PATCH", "/v2/apps"),
    ("PUT", "/v2/apps/a"),
    ("PATCH", "/v2/apps/a"),
    ("POST", "/v2/groups"),
    ("PUT", "/v2/groups/g"),
    ("POST", "/v2/groups/g"),
    ("POST", "/v2/tasks/delete"),
]


def test_garbage_never_gets_a_500(client: TestClient) -> None:
    client.post("/v2/apps", json={"id": "/a", "cmd": "sleep 60"})
    for method, path in WRITES:
        for body in GARBAGE:
            response = client.request(
                method,
                f"{path}?force=true",
                content=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code < 500, (method, path, body, response.text)
            if response.status_code == 422:
                assert response.json()["message"] in ("Object is not valid", "Invalid JSON")


def test_service_ports_are_unique_and_kept(client: TestClient) -> None:
    two = [{"port": 0, "name": "http"}, {"port": 0, "name": "admin"}]
    client.post("/v2/apps", json={"id": "/a", "cmd": "x", "portDefinitions": two})
    client.post("/v2/apps", json={"id": "/b", "cmd": "x"})
    ports = {
        a["id"]: [p["port"] for p in a["portDefinitions"]]
        for a in client.get("/v2/apps").json()["apps"]
    }
    assert ports == {"/a": [10000, 10001], "/b": [10002]}
    replaced = {"cmd": "y", "portDefinitions": two}
    client.put("/v2/apps/a?force=true&partialUpdate=false", json=replaced)
    after = client.get("/v2/apps/a").json()["app"]["portDefinitions"]
    assert [p["port"] for p in after] == [10000, 10001]


def test_group_replace_versions_and_rollback(client: TestClient) -> None:
    first = {"id": "/g", "apps": [{"id": "a", "cmd": "x"}, {"id": "b", "cmd": "x"}]}
    v1 = client.post("/v2/groups", json=first).json()["version"]
    replaced = client.put(
        "/v2/groups/g?force=true", json={"apps": [{"id": "a", "cmd": "y"}, {"id": "c", "cmd": "z"}]}
    )
    assert replaced.status_code == 200
    ids = sorted(a["id"] for a in client.get("/v2/groups/g").json()["apps"])
    assert ids == ["/g/a", "/g/c"]  # b was left out: removed
    versions = client.get("/v2/groups/g/versions").json()
    assert versions[0] == replaced.json()["version"] and v1 in versions
    back = client.put("/v2/groups/g?force=true", json={"version": v1})
    assert back.status_code == 200, back.text
    apps = {a["id"]: a["cmd"] for a in client.get("/v2/groups/g").json()["apps"]}
    assert apps == {"/g/a": "x", "/g/b": "x"}
    removed = client.delete("/v2/groups/g?force=true")
    assert removed.status_code == 200
    assert client.get("/v2/apps").json()["apps"] == []


def test_event_bus_drops_the_oldest_for_a_slow_subscriber() -> None:
    from tessera.master.events import EventBus

    bus = EventBus()
    slow = bus.subscribe(["deployment_success"])
    bus.publish("status_update_event", 0.0, taskId="t")
    for number in range(10_005):
        bus.publish("deployment_success", 0.0, id=str(number))
    assert slow.queue.qsize() == 10_000 and slow.dropped == 5
    assert slow.queue.get_nowait()["id"] == "5"
    bus.unsubscribe(slow)
    assert bus.subscribers == 0


def test_controller_restarts_from_the_store(client: TestClient) -> None:
    """Stop and start again (as after losing and winning back the leadership): the state
    comes from the store once, not twice."""
    client.post("/v2/apps", json={"id": "/web", "cmd": "sleep 60"})
    controller = client.app.state.services  # type: ignore[attr-defined]
    client.portal.call(controller.stop)  # type: ignore[union-attr]
    client.portal.call(controller.start)  # type: ignore[union-attr]
    assert len(client.get("/v2/apps/web/versions").json()["versions"]) == 1
    assert [a["id"] for a in client.get("/v2/apps").json()["apps"]] == ["/web"]
    assert client.put("/v2/apps/web?force=true", json={"instances": 2}).status_code == 200
