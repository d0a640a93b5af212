"""`/v1/quotas` in-process: set, read, list (filtered by permission), remove, and 422s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers, create_user

QUOTA_A = "dcos:mesos:master:quota:role:team-a"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    with TestClient(app) as made:
        made.headers.update(auth_headers(tmp_path))
        yield made


def test_set_show_list_and_remove_a_quota(client: TestClient) -> None:
    put = client.put("/v1/quotas/team-a", json={"cpus": 10, "mem": 20480, "instances": 5})
    assert put.status_code == 200, put.text
    assert put.json() == {
        "role": "team-a",
        "limits": {"cpus": 10, "mem": 20480, "instances": 5},
        "weight": 1.0,
        "consumed": {"cpus": 0, "mem": 0, "disk": 0, "gpus": 0, "instances": 0, "apps": 0},
    }
    assert client.get("/v1/quotas/team-a").json()["limits"]["cpus"] == 10
    client.put("/v1/quotas/team-b", json={"gpus": 1})
    assert [q["role"] for q in client.get("/v1/quotas").json()["quotas"]] == ["team-a", "team-b"]
    # PUT replaces: what it leaves out is unlimited again.
    assert client.put("/v1/quotas/team-a", json={"cpus": 2}).json()["limits"] == {"cpus": 2}
    weighted = client.put("/v1/quotas/team-b", json={"gpus": 1, "weight": 3})
    assert weighted.json()["weight"] == 3 and weighted.json()["limits"] == {"gpus": 1}
    assert client.put("/v1/quotas/team-b", json={"weight": 0}).status_code == 422
    removed = client.delete("/v1/quotas/team-a")
    assert removed.status_code == 200 and removed.json()["limits"] == {"cpus": 2}
    assert client.get("/v1/quotas/team-a").status_code == 404
    assert client.delete("/v1/quotas/team-a").status_code == 404


def test_bad_limits_are_422_with_field_paths(client: TestClient) -> None:
    answer = client.put(
        "/v1/quotas/team-a", json={"cpus": -1, "gpus": 0.5, "instances": "3", "cores": 2}
    )
    assert answer.status_code == 422
    paths = {detail["path"] for detail in answer.json()["details"]}
    assert paths == {"/cpus", "/gpus", "/instances", "/cores"}
    assert client.put("/v1/quotas/team-a", json=[1]).status_code == 422
    assert client.put("/v1/quotas/a%20b", json={"cpus": 1}).status_code == 422


def test_team_members_read_their_own_quota_only(client: TestClient) -> None:
    client.put("/v1/quotas/team-a", json={"cpus": 1})
    client.put("/v1/quotas/team-b", json={"cpus": 1})
    alice = create_user(client, "alice", "secret-alice-1", [f"{QUOTA_A} read"])
    listed = client.get("/v1/quotas", headers=alice).json()["quotas"]
    assert [q["role"] for q in listed] == ["team-a"]
    assert client.get("/v1/quotas/team-a", headers=alice).status_code == 200
    assert client.get("/v1/quotas/team-b", headers=alice).status_code == 403
    assert client.put("/v1/quotas/team-a", json={"cpus": 9}, headers=alice).status_code == 403
    assert client.delete("/v1/quotas/team-a", headers=alice).status_code == 403
