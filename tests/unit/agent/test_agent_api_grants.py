"""The agent's HTTP API in-process: every route needs a grant for this agent and task, the
keys come from the master's JWKS (fetched again for an unknown key, rate limited)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from tessera.agent.daemon import LocalTask
from tessera.agent.grant_keys import REFETCH_AFTER, MasterKeys, parse_jwks
from tessera.agent.http_api import create_agent_app
from tessera.model.task import TaskState
from tessera.security.grants import GRANT_TTL_SECONDS, issue_grant
from tessera.security.tokens import TokenIssuer, jwks_document, new_signing_key
from tessera.testing.clock import FakeClock

AGENT = "agent-x"
ROUTES = (
    "/v1/info",
    "/v1/sandboxes/{}/files",
    "/v1/sandboxes/{}/files/read",
    "/v1/sandboxes/{}/files/follow",
    "/v1/tasks/{}/usage",
)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_signing_key(2048)


class Setup:
    def __init__(self, tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.clock = FakeClock()
        self.fetches = 0
        self.published: list[rsa.RSAPrivateKey] = [key]
        for task_id in ("a.1", "b.1"):
            sandbox = tmp_path / task_id
            sandbox.mkdir()
            (sandbox / "stdout").write_text(f"hello from {task_id}\n")
        executor = SimpleNamespace(
            sandbox=lambda task_id: tmp_path / task_id,
            isolation_info=lambda: {"kind": "test"},
            running=lambda: [],
        )
        config = SimpleNamespace(
            masters=("http://master.invalid",),
            hostname="host-x",
            resources=SimpleNamespace(to_json=lambda: {"cpus": 1}),
            attributes={},
        )
        self.daemon: Any = SimpleNamespace(
            agent_id=AGENT,
            clock=self.clock,
            config=config,
            executor=executor,
            tasks={
                "a.1": LocalTask("a.1", TaskState.TASK_FINISHED),
                "b.1": LocalTask("b.1", TaskState.TASK_FINISHED),
            },
        )
        self.keys = MasterKeys(
            lambda: config.masters, self.clock, transport=httpx.MockTransport(self._jwks)
        )

    def _jwks(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/acs/api/v1/auth/jwks"
        self.fetches += 1
        return httpx.Response(200, json=jwks_document(k.public_key() for k in self.published))

    def grant(self, task_id: str = "a.1", agent_id: str = AGENT, **kw: Any) -> dict[str, str]:
        signer = kw.pop("key", self.key)
        token = issue_grant(
            signer, "c1", agent_id=agent_id, task_id=task_id, uid="u", clock=self.clock, **kw
        ).token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def setup(tmp_path: Path, key: rsa.RSAPrivateKey) -> Setup:
    return Setup(tmp_path, key)


@pytest.fixture
def agent(setup: Setup) -> Iterator[TestClient]:
    with TestClient(create_agent_app(setup.daemon, setup.keys)) as client:
        yield client


def test_every_route_needs_a_grant(agent: TestClient, setup: Setup) -> None:
    for route in ROUTES:
        answer = agent.get(route.format("a.1"))
        assert answer.status_code == 401, route
        assert answer.headers["www-authenticate"].startswith("Bearer")
    for junk in ("Bearer", "token=", "Bearer x.y.z", "Basic dTpw", "token=a.b.c"):
        assert agent.get("/v1/info", headers={"Authorization": junk}).status_code == 401
    not_ascii = {"Authorization": b"token=\xe9.\xe9.\xe9"}
    assert agent.get("/v1/info", headers=not_ascii).status_code == 401
    # Docs and schema are not served either.
    assert agent.get("/openapi.json").status_code == 404
    assert agent.get("/docs").status_code == 404


def test_a_grant_opens_its_task(agent: TestClient, setup: Setup) -> None:
    grant = setup.grant("a.1")
    files = agent.get("/v1/sandboxes/a.1/files", headers=grant)
    assert files.status_code == 200 and files.json()["files"][0]["path"] == "stdout"
    read = agent.get("/v1/sandboxes/a.1/files/read", headers=grant)
    assert read.json()["data"] == "hello from a.1\n"
    followed = agent.get("/v1/sandboxes/a.1/files/follow", headers=grant)
    assert followed.content == b"hello from a.1\n"
    assert agent.get("/v1/tasks/a.1/usage", headers=grant).status_code == 409  # not running
    # DC/OS's header form too
    token = grant["Authorization"].removeprefix("Bearer ")
    dcos = {"Authorization": f"token={token}"}
    assert agent.get("/v1/sandboxes/a.1/files/read", headers=dcos).status_code == 200
    # never from the query string (it would end up in logs)
    assert agent.get("/v1/sandboxes/a.1/files", params={"token": token}).status_code == 401


def test_info_lists_the_granted_task_only(agent: TestClient, setup: Setup) -> None:
    info = agent.get("/v1/info", headers=setup.grant("a.1"))
    assert info.status_code == 200
    assert info.json()["id"] == AGENT and info.json()["tasks"] == {"a.1": "TASK_FINISHED"}
    assert agent.get("/v1/info", headers=setup.grant("gone.1")).json()["tasks"] == {}


def test_another_tasks_grant_is_403(agent: TestClient, setup: Setup) -> None:
    grant_a = setup.grant("a.1")
    for route in ROUTES[1:]:
        answer = agent.get(route.format("b.1"), headers=grant_a)
        assert answer.status_code == 403, route
        assert "wrong_task" in answer.json()["message"]


def test_another_agents_grant_is_401(agent: TestClient, setup: Setup) -> None:
    other = setup.grant("a.1", agent_id="agent-y")
    for route in ROUTES:
        assert agent.get(route.format("a.1"), headers=other).status_code == 401, route


def test_expired_grant_is_401(agent: TestClient, setup: Setup) -> None:
    grant = setup.grant("a.1")
    setup.clock.advance(GRANT_TTL_SECONDS + 31)
    answer = agent.get("/v1/sandboxes/a.1/files", headers=grant)
    assert answer.status_code == 401 and "expired" in answer.json()["message"]


def test_an_auth_token_is_not_a_grant(agent: TestClient, setup: Setup) -> None:
    token = TokenIssuer(setup.key, "c1", setup.clock).issue("admin", "user").token
    headers = {"Authorization": f"token={token}"}
    assert agent.get("/v1/sandboxes/a.1/files", headers=headers).status_code == 401


def test_keys_are_cached_and_refetched_for_a_new_key(agent: TestClient, setup: Setup) -> None:
    for _ in range(3):
        assert agent.get("/v1/info", headers=setup.grant()).status_code == 200
    assert setup.fetches == 1
    # Forged grants with unknown keys: at most one fetch per REFETCH_AFTER, whatever the rate.
    forger = new_signing_key(2048)
    setup.clock.advance(REFETCH_AFTER)
    for _ in range(5):
        assert agent.get("/v1/info", headers=setup.grant(key=forger)).status_code == 401
    assert setup.fetches == 2
    # The cluster's key changed (a restored cluster): the new one is fetched once allowed.
    setup.published = [forger]
    setup.clock.advance(REFETCH_AFTER)
    assert agent.get("/v1/info", headers=setup.grant(key=forger)).status_code == 200
    assert setup.fetches == 3


def test_unreachable_masters_mean_401_not_500(setup: Setup) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    keys = MasterKeys(
        lambda: ("http://m1", "http://m2"), setup.clock, transport=httpx.MockTransport(down)
    )
    with TestClient(create_agent_app(setup.daemon, keys)) as client:
        assert client.get("/v1/info", headers=setup.grant()).status_code == 401


def test_parse_jwks_keeps_only_usable_rsa_keys(key: rsa.RSAPrivateKey) -> None:
    document = jwks_document([key.public_key()])
    entry = document["keys"][0]
    junk: list[Any] = [
        {"kty": "EC"},
        {**entry, "alg": "HS256"},
        {**entry, "n": "not base64!"},
        {**entry, "kid": "lies"},
        "x",
    ]
    parsed = parse_jwks({"keys": [*junk, entry]})
    assert len(parsed) == 1  # the lying kid is replaced by the key's real thumbprint
    assert entry["kid"] in parsed
    bad_documents: list[Any] = [{}, {"keys": "x"}, {"keys": [{"kty": "EC"}]}, [], None]
    for bad in bad_documents:
        with pytest.raises(ValueError):
            parse_jwks(bad)


def test_links_and_special_files_in_a_sandbox_are_never_followed(
    agent: TestClient, setup: Setup, tmp_path: Path
) -> None:
    """The agent reads as root what the task controls: a link to a file outside (or to the
    other task's sandbox), a link to a directory, a FIFO, `..`: none of them is read."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    sandbox = tmp_path / "a.1"
    (sandbox / "leak").symlink_to(secret)
    (sandbox / "neighbour").symlink_to(tmp_path / "b.1")
    (sandbox / "logs").mkdir()
    (sandbox / "logs" / "app.log").write_text("inside\n")
    (sandbox / "logs" / "up").symlink_to(tmp_path)
    os.mkfifo(sandbox / "pipe")
    grant = setup.grant("a.1")
    read = "/v1/sandboxes/a.1/files/read"
    for path in ("leak", "neighbour/stdout", "logs/up/secret", "pipe", "logs"):
        assert agent.get(read, params={"path": path}, headers=grant).status_code == 404, path
        follow = agent.get("/v1/sandboxes/a.1/files/follow", params={"path": path}, headers=grant)
        assert follow.status_code == 404, path
    for path in ("../b.1/stdout", "/etc/passwd", "logs/../stdout", ""):
        assert agent.get(read, params={"path": path}, headers=grant).status_code == 422, path
    assert agent.get(read, params={"path": "logs/app.log"}, headers=grant).json()["data"] == (
        "inside\n"
    )
    listed = [
        f["path"] for f in agent.get("/v1/sandboxes/a.1/files", headers=grant).json()["files"]
    ]
    assert listed == ["logs/app.log", "stdout"]
