"""The secrets API and store in-process: shapes, codes, list filtering, nothing clear at rest.

Route-level permission is the global auth dependency's (tested with the auth wiring); here
a tiny middleware stands in for it and sets the caller, so the handlers' own filtering and
the store are tested alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from tessera.http_errors import install_error_handlers
from tessera.master.api.secrets_v1 import router
from tessera.master.secrets import KIND, SecretStore, SecretUnavailable
from tessera.model.permissions import Principal, PrincipalKind, grant, team_groups
from tessera.model.secret_refs import SecretUse
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.security.secret_box import MAX_VALUE_BYTES
from tessera.store.memory import MemoryStore

KEK = bytes(range(32))
CANARY = "canary-7f3e9a1c-secret-value"
BASE = "/secrets/v1/secret/default"

PRINCIPALS = {
    "admin": Principal.build("admin", PrincipalKind.USER, [grant("dcos:superuser", "full")]),
    "alice": Principal.build("alice", PrincipalKind.USER, group_grants=team_groups("team-a")),
    "bob": Principal.build("bob", PrincipalKind.USER, group_grants=team_groups("team-b")),
}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def client(store: MemoryStore) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.state.secrets = SecretStore(store, lambda: KEK)

    @app.middleware("http")
    async def caller(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.principal = PRINCIPALS[request.headers.get("x-user", "admin")]
        return await call_next(request)

    app.include_router(router)
    with TestClient(app) as test_client:
        yield test_client


def test_create_read_update_delete(client: TestClient) -> None:
    created = client.put(f"{BASE}/team-a/db", json={"value": CANARY, "description": "db"})
    assert created.status_code == 201, created.text
    again = client.put(f"{BASE}/team-a/db", json={"value": "other"})
    assert again.status_code == 409
    read = client.get(f"{BASE}/team-a/db").json()
    assert read["value"] == CANARY and read["author"] == "admin" and read["description"] == "db"
    assert client.patch(f"{BASE}/team-a/db", json={"value": "new"}).status_code == 204
    assert client.get(f"{BASE}/team-a/db").json()["value"] == "new"
    assert client.get(f"{BASE}/team-a/db").json()["description"] == "db"
    assert client.delete(f"{BASE}/team-a/db").status_code == 204
    assert client.get(f"{BASE}/team-a/db").status_code == 404
    assert client.delete(f"{BASE}/team-a/db").status_code == 404
    assert client.patch(f"{BASE}/team-a/db", json={"value": "x"}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"value": 5}, {"valu": "x"}, {}, [], "x", {"value": "x", "extra": 1}],
)
def test_bad_bodies_are_422_in_marathons_shape(client: TestClient, body: object) -> None:
    answer = client.put(f"{BASE}/team-a/db", json=body)
    assert answer.status_code == 422
    assert answer.json()["message"] == "Object is not valid"
    assert "details" in answer.json()


def test_errors_never_echo_the_value(client: TestClient) -> None:
    answer = client.put(f"{BASE}/team-a/db", json={"value": CANARY, "labels": CANARY})
    assert answer.status_code == 422 and CANARY not in answer.text


@pytest.mark.parametrize(
    "path", ["team-a/%2e%2e/team-b/db", "Team-A/db", "team-a//db", "team-a/%2e"]
)
def test_non_canonical_paths_are_refused(client: TestClient, path: str) -> None:
    assert client.put(f"{BASE}/{path}", json={"value": "x"}).status_code in (404, 422)


def test_size_limit(client: TestClient) -> None:
    exact = "a" * MAX_VALUE_BYTES
    assert client.put(f"{BASE}/big", json={"value": exact}).status_code == 201
    over = client.put(f"{BASE}/big2", json={"value": exact + "a"})
    assert over.status_code == 413
    huge = client.put(f"{BASE}/big3", content=b'{"value": "' + b"a" * (3 * MAX_VALUE_BYTES) + b'"}')
    assert huge.status_code == 413


def test_list_shows_only_what_the_caller_may_list(client: TestClient) -> None:
    for path in ("team-a/db", "team-a/x/api", "team-b/db", "root"):
        assert client.put(f"{BASE}/{path}", json={"value": "v"}).status_code == 201
    everything = client.get(f"{BASE}/?list=true").json()["array"]
    assert everything == ["root", "team-a/db", "team-a/x/api", "team-b/db"]
    assert client.get(f"{BASE}/team-a?list=true").json() == {"array": ["db", "x/api"]}
    alice = client.get(f"{BASE}/?list=true", headers={"x-user": "alice"}).json()["array"]
    assert alice == ["team-a/db", "team-a/x/api"]
    bob = client.get(f"{BASE}/team-a?list=true", headers={"x-user": "bob"}).json()
    assert bob == {"array": []}


def test_the_store_row_holds_no_clear_value(client: TestClient, store: MemoryStore) -> None:
    assert client.put(f"{BASE}/team-a/db", json={"value": CANARY}).status_code == 201
    rows = asyncio.run(store.load(KIND))
    assert list(rows) == ["/team-a/db"]
    raw = json.dumps(rows)
    assert CANARY not in raw
    assert CANARY.encode().hex() not in raw
    assert set(rows["/team-a/db"]) == {"sealed", "author", "description", "created", "updated"}


def _task(app_id: str, *uses: SecretUse) -> Task:
    spec = TaskSpec(name="t", cmd="true", app_id=app_id, secrets=uses)
    return Task(id="t.1", spec=spec, state=TaskState.TASK_STAGING, created_at=0, updated_at=0)


def test_delivery_checks_the_space_again_and_names_no_value() -> None:
    secrets = SecretStore(MemoryStore(), lambda: KEK)

    async def scenario() -> None:
        await secrets.create("/team-a/db", CANARY.encode(), "admin")
        await secrets.create("/team-b/db", b"b", "admin")
        uses = (SecretUse("/team-a/db", env="DB"), SecretUse("/team-a/db", file="f"))
        values = await secrets.deliver(_task("/team-a/web", *uses))
        assert values == [{"env": "DB", "value": CANARY}, {"file": "f", "value": CANARY}]
        job = await secrets.deliver(_task("team-a.nightly", SecretUse("/team-a/db", env="X")))
        assert job == [{"env": "X", "value": CANARY}]
        with pytest.raises(SecretUnavailable, match="may be used only by services in"):
            await secrets.deliver(_task("/team-a/web", SecretUse("/team-b/db", env="DB")))
        with pytest.raises(SecretUnavailable):
            await secrets.deliver(_task("/team-a/web", SecretUse("/team-a/gone", env="DB")))
        other_kek = SecretStore(secrets.store, lambda: bytes(32))
        with pytest.raises(SecretUnavailable) as wrong:
            await other_kek.deliver(_task("/team-a/web", SecretUse("/team-a/db", env="DB")))
        assert CANARY not in str(wrong.value)

    asyncio.run(scenario())
