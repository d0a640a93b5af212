"""AuditMiddleware and GET /v1/audit on a tiny app whose dependency sets the request state
as the master's auth dependency does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tessera.http_errors import ApiError, install_error_handlers
from tessera.master.api import audit_v1
from tessera.master.audit import AuditLog, AuditMiddleware, AuditSettings, acting_user
from tessera.model.permissions import (
    Principal,
    PrincipalKind,
    parse_grant,
    permitted,
    required,
    route_rule,
)
from tessera.security.audit_summary import describe_app_change
from tessera.store.memory import MemoryStore
from tessera.testing.clock import FakeClock

SERVICES = "dcos:service:marathon:marathon:services"
PRINCIPALS = {
    "admin": Principal.build("admin", PrincipalKind.USER, [parse_grant("dcos:superuser full")]),
    "alice": Principal.build(
        "alice", PrincipalKind.USER, [parse_grant(f"{SERVICES}:/team-a full")]
    ),
    "ro": Principal.build("ro", PrincipalKind.USER, [parse_grant(f"{SERVICES}:/team-a read")]),
    "bob": Principal.build("bob", PrincipalKind.USER, [parse_grant(f"{SERVICES}:/team-b full")]),
}


async def fake_auth(request: Request) -> None:
    """What the lead's dependency leaves in the state, checked with the real rules."""
    route = request.scope["route"].path
    rule = route_rule(request.method, route)
    if rule.public:
        return
    uid = request.headers.get("x-user")
    if uid not in PRINCIPALS:
        raise ApiError(401, "authentication required")
    principal = PRINCIPALS[uid]
    request.state.principal = principal
    request.state.token_jti = f"jti-{uid}"
    needs = required(rule, dict(request.path_params), (), dict(request.query_params))
    if needs:
        request.state.audit_permission = "; ".join(f"{n.rid} {n.action}" for n in needs)
        request.state.audit_resource = needs[0].rid.tail
    if not permitted(principal, needs):
        request.state.audit_decision = "deny"
        raise ApiError(403, f"{uid} is not allowed to do this")
    request.state.audit_decision = "allow"


def make_app(audit: AuditLog) -> FastAPI:
    app = FastAPI(dependencies=[Depends(fake_auth)])
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware, audit=audit)
    audit_v1.install(app, SimpleNamespace(audit=audit))

    @app.get("/v2/apps/{app_id:path}")
    async def show(app_id: str) -> dict[str, Any]:
        return {"app": {"id": app_id}}

    @app.post("/service/marathon/v2/apps/{app_id:path}/restart")
    @app.put("/v2/apps/{app_id:path}")
    async def update(app_id: str, request: Request) -> JSONResponse:
        before = {"id": "/" + app_id, "instances": 3, "env": {"PASSWORD": "hunter2"}}
        after = {**before, "instances": 10}
        request.state.audit_summary = describe_app_change(before, after)
        assert acting_user(request.state) == request.headers["x-user"]
        assert acting_user(request.scope) == request.headers["x-user"]
        return JSONResponse({"deploymentId": "d-1"}, headers={"Marathon-Deployment-Id": "d-1"})

    @app.delete("/v2/apps/{app_id:path}")
    async def delete(app_id: str) -> None:
        raise RuntimeError("boom")

    @app.post("/acs/api/v1/auth/login")
    async def login() -> dict[str, str]:
        return {"token": "t"}

    return app


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, AuditLog, FakeClock]]:
    clock = FakeClock(wall=1_800_000_000.0)
    audit = AuditLog(
        MemoryStore(), tmp_path / "audit.log", clock, AuditSettings(denials_per_minute=3)
    )
    with TestClient(make_app(audit), raise_server_exceptions=False) as client:
        yield client, audit, clock


def lines(client: TestClient) -> list[dict[str, Any]]:
    audit: AuditLog = client.app.state.audit  # type: ignore[attr-defined]
    return [json.loads(line) for line in audit.file.path.read_text().splitlines()]


def as_user(uid: str) -> dict[str, str]:
    return {"x-user": uid}


def test_writes_are_recorded_before_the_answer_and_reads_are_not(setup: Any) -> None:
    client, audit, _ = setup
    assert client.get("/v2/apps/team-a/web", headers=as_user("alice")).status_code == 200
    assert not audit.file.path.exists()
    response = client.put("/v2/apps/team-a/web", headers=as_user("alice"), json={"instances": 10})
    assert response.status_code == 200
    [record] = lines(client)  # on disk by the time the client has the answer
    assert record["request_id"] == response.headers["x-request-id"]
    assert {k: record[k] for k in ("uid", "principal_kind", "jti", "method", "route")} == {
        "uid": "alice",
        "principal_kind": "user",
        "jti": "jti-alice",
        "method": "PUT",
        "route": "/v2/apps/{app_id:path}",
    }
    assert record["resource"] == "/team-a/web"
    assert record["permission"] == f"{SERVICES}:/team-a/web update"
    assert (record["action"], record["decision"], record["status"]) == ("update", "allow", 200)
    assert record["summary"] == "scaled /team-a/web 3→10"
    assert record["deployment"] == "d-1"
    assert record["source"] == "testclient"
    assert "hunter2" not in audit.file.path.read_text()


def test_the_alias_used_is_recorded(setup: Any) -> None:
    client, _, _ = setup
    client.post("/service/marathon/v2/apps/team-a/web/restart", headers=as_user("admin"))
    [record] = lines(client)
    assert record["route"] == "/service/marathon/v2/apps/{app_id:path}/restart"
    assert record["uid"] == "admin" and record["decision"] == "allow"
    assert record["resource"] == "/team-a/web"  # from the path, superusers are not checked


def test_denials_are_recorded_on_every_method(setup: Any) -> None:
    client, _, _ = setup
    assert client.get("/v2/apps/team-b/web", headers=as_user("alice")).status_code == 403
    assert client.put("/v2/apps/team-a/web", headers=as_user("ro"), json={}).status_code == 403
    assert client.get("/v2/apps/team-a/web").status_code == 401
    denied = lines(client)
    assert [(r["uid"], r["method"], r["status"], r["decision"]) for r in denied] == [
        ("alice", "GET", 403, "deny"),
        ("ro", "PUT", 403, "deny"),
        (None, "GET", 401, "deny"),
    ]
    assert denied[0]["resource"] == "/team-b/web"
    assert denied[0]["permission"] == f"{SERVICES}:/team-b/web read"


def test_denial_floods_are_sampled_and_counted(setup: Any) -> None:
    client, audit, clock = setup
    for _ in range(10):
        client.get("/v2/apps/team-b/web", headers=as_user("alice"))
    client.get("/v2/apps/team-a/web", headers=as_user("bob"))  # another principal: its own budget
    assert [r["uid"] for r in lines(client)] == ["alice"] * 3 + ["bob"]
    assert audit.denials.dropped_total == 7
    clock.advance(60)
    client.get("/v2/apps/team-b/web", headers=as_user("alice"))
    assert lines(client)[-1]["suppressed"] == 7


def test_failures_and_handler_recorded_routes(setup: Any) -> None:
    client, _, _ = setup
    assert client.delete("/v2/apps/team-a/web", headers=as_user("alice")).status_code == 500
    assert client.post("/acs/api/v1/auth/login", json={}).status_code == 200
    [record] = lines(client)
    assert (record["method"], record["status"], record["decision"]) == ("DELETE", 500, "allow")


def test_the_api_shows_each_caller_what_it_may_read(setup: Any) -> None:
    client, _, _ = setup
    client.put("/v2/apps/team-a/web", headers=as_user("alice"), json={})
    client.put("/v2/apps/team-b/web", headers=as_user("bob"), json={})
    client.put("/v2/apps/team-a/web", headers=as_user("bob"), json={})  # denied, about team-a
    client.put("/v2/apps/team-ab/x", headers=as_user("admin"), json={})

    def summaries(uid: str, **params: Any) -> list[str]:
        response = client.get("/v1/audit", headers=as_user(uid), params=params)
        assert response.status_code == 200, response.text
        assert response.json()["verified"] is True
        return [f"{r['uid']} {r['status']} {r['resource']}" for r in response.json()["records"]]

    team_a = ["alice 200 /team-a/web", "bob 403 /team-a/web"]
    assert summaries("ro", path="/team-a") == team_a
    assert summaries("ro") == team_a
    assert summaries("bob") == ["bob 200 /team-b/web"]
    assert len(summaries("admin")) == 4
    assert summaries("admin", path="/team-a") == team_a
    assert summaries("admin", path="/team-a", limit=1) == team_a[-1:]
    assert summaries("admin", path="/team-a", since="2027-01-15T00:00:00Z") == team_a
    assert summaries("admin", path="/team-a", since="2100-01-01") == []
    assert (
        client.get("/v1/audit", headers=as_user("ro"), params={"path": "/team-b"}).status_code
        == 403
    )
    bad = client.get("/v1/audit", headers=as_user("admin"), params={"since": "yesterday"})
    assert bad.status_code == 422
