"""The leader proxy in-process: served here while leading, forwarded while another master
leads, 503 while none does; and who leads, as a lone (SQLite) master answers it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.master.leader_proxy import FORWARDED_BY, LeaderProxy
from tessera.store import MemoryStore, StoreUnavailable
from tessera.testing.auth import auth_headers

SELF = "http://follower:5050"
LEADER = "http://leader:5050"


def leader_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def echo(rest: str, request: Request) -> dict[str, object]:
        return {
            "served": "leader",
            "method": request.method,
            "path": rest,
            "query": str(request.url.query),
            "body": (await request.body()).decode(),
            "forwarded_by": request.headers.get(FORWARDED_BY),
        }

    return app


def local_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, str]:
        return {"served": "here"}

    @app.get("/v2/leader")
    async def leader() -> dict[str, str]:
        return {"leader": "local answer"}

    return app


class Setting:
    """What `leader_url()` answers: None (this master leads), a URL, or "" (no leader)."""

    def __init__(self) -> None:
        self.leader: str | None = None


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[httpx.AsyncClient, Setting]]:
    setting = Setting()
    to_leader = httpx.AsyncClient(transport=httpx.ASGITransport(app=leader_app()))
    proxy = LeaderProxy(local_app(), lambda: setting.leader, lambda: SELF, http=to_leader)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url=SELF)
    yield client, setting
    await client.aclose()
    await to_leader.aclose()


async def test_the_leader_serves_itself_and_says_so(
    proxied: tuple[httpx.AsyncClient, Setting],
) -> None:
    client, setting = proxied
    setting.leader = None
    response = await client.get("/v1/tasks")
    assert response.json() == {"served": "here"}
    assert response.headers["x-marathon-leader"] == SELF


async def test_a_follower_forwards_method_path_query_and_body(
    proxied: tuple[httpx.AsyncClient, Setting],
) -> None:
    client, setting = proxied
    setting.leader = LEADER
    response = await client.post("/v1/tasks?force=true", content=b'{"cmd": "true"}')
    assert response.status_code == 200
    assert response.json() == {
        "served": "leader",
        "method": "POST",
        "path": "tasks",
        "query": "force=true",
        "body": '{"cmd": "true"}',
        "forwarded_by": SELF,
    }


async def test_who_leads_is_answered_locally(proxied: tuple[httpx.AsyncClient, Setting]) -> None:
    client, setting = proxied
    setting.leader = LEADER
    assert (await client.get("/v2/leader")).json() == {"leader": "local answer"}


async def test_lifespan_passes_through() -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        events.append(scope["type"])

    proxy = LeaderProxy(app, lambda: LEADER, lambda: SELF)
    await proxy({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert events == ["lifespan"]
    await proxy.aclose()


async def test_no_leader_or_a_forwarding_loop_is_503(
    proxied: tuple[httpx.AsyncClient, Setting],
) -> None:
    client, setting = proxied
    setting.leader = ""
    response = await client.get("/v1/tasks")
    assert response.status_code == 503
    assert "no leading master" in response.json()["message"]
    # Two masters that each think the other leads must not bounce a request forever.
    setting.leader = LEADER
    looped = await client.get("/v1/tasks", headers={FORWARDED_BY: "http://other:5050"})
    assert looped.status_code == 503


async def test_an_unreachable_leader_is_503() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    to_leader = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    proxy = LeaderProxy(local_app(), lambda: LEADER, lambda: SELF, http=to_leader)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url=SELF) as c:
        response = await c.get("/v1/tasks")
    assert response.status_code == 503
    assert "unreachable" in response.json()["message"]
    await to_leader.aclose()


@pytest.fixture
def lone_master(tmp_path: Path) -> Iterator[TestClient]:
    config = MasterConfig(work_dir=tmp_path, port=5050, advertise_url="http://m1:5050")
    with TestClient(create_app(config, store=MemoryStore())) as client:
        client.headers.update(auth_headers(tmp_path))
        yield client


def test_a_lone_master_always_leads(lone_master: TestClient) -> None:
    assert lone_master.get("/v1/leader").json() == {
        "leader": "m1:5050",
        "url": "http://m1:5050",
        "id": "self",
        "self": True,
        "term": 0,
        "ha": False,
    }
    # As before: Marathon's answer names the master as the client reached it.
    assert lone_master.get("/v2/leader").json() == {"leader": "testserver:5050"}
    info = lone_master.get("/v2/info").json()
    assert info["elected"] is True and info["marathon_config"]["ha"] is False
    # No proxy in front of a lone master: no leader header either.
    assert "x-marathon-leader" not in lone_master.get("/v1/tasks").headers


class UnavailableStore(MemoryStore):
    """Loses its quorum once the master has started."""

    quorum = True

    async def commit(self, operations: Any, *, expect_revision: int | None = None) -> int:
        if not self.quorum:
            raise StoreUnavailable("no quorum")
        return await super().commit(operations, expect_revision=expect_revision)


def test_a_store_without_quorum_is_503_with_its_reason(tmp_path: Path) -> None:
    store = UnavailableStore()
    app = create_app(MasterConfig(work_dir=tmp_path), store=store)
    with TestClient(app) as client:
        store.quorum = False
        client.headers.update(auth_headers(tmp_path))
        response = client.post("/v1/tasks", json={"cmd": "true"})
    assert response.status_code == 503
    assert response.json() == {"message": "store unavailable, retry later: no quorum"}
