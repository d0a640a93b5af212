"""`POST /v1/tasks/{id}/sandbox-grant` in-process: who gets a grant, for what, and no oracle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tessera.agent.grant_keys import parse_jwks
from tessera.master.api import sandbox_v1
from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.master.core import Master
from tessera.model.agent import Agent, AgentState
from tessera.model.permissions import job_rid, sandbox_rid, service_rid
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.security.grants import verify_grant
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers, create_user
from tessera.testing.clock import FakeClock

SERVICES_A = "dcos:service:marathon:marathon:services:/team-a"
SANDBOX_A = "dcos:mesos:agent:sandbox:app_id:/team-a"
SERVICES_B = "dcos:service:marathon:marathon:services:/team-b"
SANDBOX_B = "dcos:mesos:agent:sandbox:app_id:/team-b"
GRANT = "/v1/tasks/{}/sandbox-grant"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    # Until the lead wires it into create_app.
    paths = {c.path for c in iter_route_contexts(app.routes)}
    if "/v1/tasks/{task_id}/sandbox-grant" not in paths:
        sandbox_v1.install(app, app.state.master)
    with TestClient(app) as made:
        made.headers.update(auth_headers(tmp_path))
        master: Master = app.state.master
        agent = Agent(
            "agent-x",
            "host-x",
            Resources(cpus=1, mem=1024),
            {},
            AgentState.ACTIVE,
            0.0,
            http_url="http://127.0.0.1:9",
        )
        master.state.agents[agent.id] = agent
        for task_id, spec, agent_id in (
            ("team-a_web.1", TaskSpec(name="web", app_id="/team-a/web"), "agent-x"),
            ("team-a-once.1", TaskSpec(name="once", group="/team-a"), "agent-x"),
            ("team-b_web.1", TaskSpec(name="web", app_id="/team-b/web"), "agent-x"),
            ("team-a_queued.1", TaskSpec(name="q", app_id="/team-a/queued"), None),
        ):
            master.state.tasks[task_id] = Task(
                task_id, spec, TaskState.TASK_RUNNING, 0.0, 0.0, agent_id=agent_id
            )
        yield made


def test_the_superuser_gets_a_grant_for_the_tasks_agent(client: TestClient) -> None:
    answer = client.post(GRANT.format("team-a_web.1"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["agentUrl"] == "http://127.0.0.1:9" and body["agentId"] == "agent-x"
    assert body["taskId"] == "team-a_web.1" and body["expiresAt"].endswith("Z")
    # The agent checks it with what the master publishes, nothing else.
    keys = parse_jwks(client.get("/acs/api/v1/auth/jwks").json())
    grant = verify_grant(
        body["grant"], keys, agent_id="agent-x", task_id="team-a_web.1", clock=FakeClock()
    )
    assert grant.uid == "admin"
    claims = jwt.decode(body["grant"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == pytest.approx(300, abs=1)
    assert claims["iss"] == client.app.state.master.auth.cluster_id  # type: ignore[attr-defined]
    # A grant is no token for the master.
    refused = client.get("/v1/tasks", headers={"Authorization": f"token={body['grant']}"})
    assert refused.status_code == 401


def test_unknown_and_unplaced_tasks_are_404_for_the_superuser(client: TestClient) -> None:
    assert client.post(GRANT.format("ghost.1")).status_code == 404
    unplaced = client.post(GRANT.format("team-a_queued.1"))
    assert unplaced.status_code == 404 and "no sandbox" in unplaced.json()["message"]


def test_team_members_get_grants_for_their_own_tasks_only(client: TestClient) -> None:
    alice = create_user(
        client, "alice", "secret-alice-1", [f"{SERVICES_A} full", f"{SANDBOX_A} read"]
    )
    ok = client.post(GRANT.format("team-a_web.1"), headers=alice)
    assert ok.status_code == 200, ok.text
    assert jwt.decode(ok.json()["grant"], options={"verify_signature": False})["uid"] == "alice"
    assert client.post(GRANT.format("team-a-once.1"), headers=alice).status_code == 200
    # another team's task, an unknown one: the same 403 (no existence oracle)
    for task_id in ("team-b_web.1", "ghost.1", "team-b_ghost.1"):
        denied = client.post(GRANT.format(task_id), headers=alice)
        assert denied.status_code == 403, (task_id, denied.text)
    # their own unplaced task: they may read it anyway, so 404 tells them nothing new
    assert client.post(GRANT.format("team-a_queued.1"), headers=alice).status_code == 404
    assert client.post(GRANT.format("team-a_web.1")).status_code == 200


def test_reading_the_app_is_not_reading_its_sandbox(client: TestClient) -> None:
    viewer = create_user(client, "vic", "secret-vic-123", [f"{SERVICES_A} read"])
    assert client.get("/v1/tasks/team-a_web.1", headers=viewer).status_code == 200
    denied = client.post(GRANT.format("team-a_web.1"), headers=viewer)
    assert denied.status_code == 403
    assert "may not read the sandbox" in denied.json()["message"]
    # and the sandbox permission alone, without reading the app, is not enough either
    sandbox_only = create_user(client, "sam", "secret-sam-123", [f"{SANDBOX_B} read"])
    assert client.post(GRANT.format("team-b_web.1"), headers=sandbox_only).status_code == 403
    both = create_user(client, "bob", "secret-bob-123", [f"{SERVICES_B} read", f"{SANDBOX_B} read"])
    assert client.post(GRANT.format("team-b_web.1"), headers=both).status_code == 200


def test_without_credentials_401(client: TestClient) -> None:
    client.headers.pop("Authorization")
    assert client.post(GRANT.format("team-a_web.1")).status_code == 401


def test_the_sandbox_permission_of_apps_tasks_and_jobs() -> None:
    assert sandbox_v1.sandbox_rid_of(service_rid("/team-a/web")) == sandbox_rid("/team-a/web")
    assert sandbox_v1.sandbox_rid_of(service_rid("/")) == sandbox_rid("/")
    assert sandbox_v1.sandbox_rid_of(job_rid("team-a.nightly")) == sandbox_rid("/team-a/nightly")
