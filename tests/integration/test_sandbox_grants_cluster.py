"""Sandbox grants on real processes: the agent's API opens only to a grant from the master,
for that agent and that task, while it lasts; teams get grants for their own tasks only;
`tessera task logs` goes through a grant."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.master.keys import load_existing, read_cluster_key
from tessera.security.grants import issue_grant
from tessera.store.sqlite import SqliteStore
from tessera.testing.auth import create_user
from tessera.testing.clock import FakeClock
from tessera.testing.cluster import Cluster, tessera_command, wait_for

ROUTES = (
    "/v1/info",
    "/v1/sandboxes/{}/files",
    "/v1/sandboxes/{}/files/read",
    "/v1/sandboxes/{}/files/follow",
    "/v1/tasks/{}/usage",
)
TEAM_A = [
    "dcos:service:marathon:marathon:services:/team-a full",
    "dcos:mesos:agent:sandbox:app_id:/team-a read",
]
TEAM_B = [
    "dcos:service:marathon:marathon:services:/team-b full",
    "dcos:mesos:agent:sandbox:app_id:/team-b read",
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        made.start_master()
        made.start_agent("agent-1")
        yield made
    finally:
        made.stop()


def signing_key(cluster: Cluster) -> tuple[rsa.RSAPrivateKey, str]:
    """The cluster's signing key, read the way a master reads it (to forge an old grant)."""
    work_dir = cluster.root / "master"

    async def read() -> tuple[rsa.RSAPrivateKey, str]:
        store = SqliteStore(work_dir / "state.db")
        try:
            keys = await load_existing(store, read_cluster_key(work_dir / "cluster-key", False))
        finally:
            await store.close()
        assert keys is not None
        return keys.signing_key, keys.cluster_id

    return asyncio.run(read())


def running_task(cluster: Cluster, name: str, cmd: str) -> str:
    task = cluster.launch(name=name, cmd=cmd, group="/team-a", cpus=0.05, mem=16)
    cluster.wait_state(task["id"], "TASK_RUNNING", "TASK_FINISHED")
    return str(task["id"])


def test_the_agent_api_opens_only_to_the_right_grant(cluster: Cluster) -> None:
    task_a = running_task(cluster, "a", "echo hello-a; sleep 60")
    task_b = running_task(cluster, "b", "echo hello-b; sleep 60")
    access = cluster.sandbox(task_a)
    agent_url = access.agent_url
    http = access.client()

    # No grant, or the master's own token: 401 on every route.
    for route in ROUTES:
        assert http.get(route.format(task_a)).status_code == 401, route
        assert http.get(route.format(task_a), headers=cluster.headers).status_code == 401, route

    # The grant reads its own task's sandbox.
    read = wait_for(
        lambda: (
            (
                r := access.get(f"/v1/sandboxes/{task_a}/files/read", params={"path": "stdout"})
            ).status_code
            == 200
            and "hello-a" in r.json()["data"]
            and r
        ),
        10,
        "task a's output",
    )
    assert read.json()["data"] == "hello-a\n"
    assert access.get("/v1/info").json()["tasks"] == {task_a: "TASK_RUNNING"}
    assert access.get(f"/v1/tasks/{task_a}/usage").status_code == 200

    # A's grant on B: 403 on every task route.
    for route in ROUTES[1:]:
        answer = access.get(route.format(task_b))
        assert answer.status_code == 403, (route, answer.text)

    # Agent-1's grant on agent-2: 401.
    cluster.start_agent("agent-2", resources="cpus:1;mem:256;disk:100;ports:[31100-31199]")
    agent_2 = wait_for(
        lambda: next(
            (a["url"] for a in cluster.get("/v1/agents")["agents"] if a["url"] != agent_url),
            None,
        ),
        20,
        "agent-2's URL",
    )
    verify = cluster.ssl_context
    assert httpx.get(f"{agent_2}/v1/info", headers=access.headers, verify=verify).status_code == 401
    other = httpx.get(
        f"{agent_2}/v1/sandboxes/{task_a}/files", headers=access.headers, verify=verify
    )
    assert other.status_code == 401

    # Expired (signed with the cluster's own key, six minutes ago): 401.
    key, cluster_id = signing_key(cluster)
    agent_id = cluster.task(task_a)["agentId"]
    old = FakeClock(wall=time.time() - 360)
    stale = issue_grant(key, cluster_id, agent_id=agent_id, task_id=task_a, uid="admin", clock=old)
    expired = http.get(
        f"/v1/sandboxes/{task_a}/files", headers={"Authorization": f"Bearer {stale.token}"}
    )
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    fresh = issue_grant(
        key, cluster_id, agent_id=agent_id, task_id=task_a, uid="admin", clock=FakeClock()
    )
    ok = http.get(
        f"/v1/sandboxes/{task_a}/files", headers={"Authorization": f"token={fresh.token}"}
    )
    assert ok.status_code == 200
    http.close()


def test_teams_get_grants_for_their_own_tasks_only(cluster: Cluster) -> None:
    task_a = running_task(cluster, "a", "echo team-a-secret; sleep 60")
    alice = create_user(_any(cluster.http), "alice", "secret-alice-1", TEAM_A)
    bob = create_user(_any(cluster.http), "bob", "secret-bob-123", TEAM_B)
    grant = "/v1/tasks/{}/sandbox-grant"
    assert cluster.http.post(grant.format(task_a), headers=alice).status_code == 200
    denied = cluster.http.post(grant.format(task_a), headers=bob)
    assert denied.status_code == 403
    assert cluster.http.post(grant.format("team-a-ghost.1"), headers=bob).status_code == 403
    assert cluster.http.post(grant.format(task_a), headers={"Authorization": ""}).status_code == 401


def test_task_logs_go_through_a_grant(cluster: Cluster) -> None:
    task = cluster.launch(name="hello", cmd="echo out-line; echo err-line >&2", group="/team-a")
    cluster.wait_state(task["id"], "TASK_FINISHED")
    logs = cluster.cli("task", "logs", task["id"])
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "out-line\n"
    errors = cluster.cli("task", "logs", "--stderr", task["id"])
    assert errors.stdout == "err-line\n"
    followed = cluster.cli("task", "logs", "--follow", task["id"])
    assert followed.returncode == 0 and followed.stdout == "out-line\n"
    missing = cluster.cli("task", "logs", "ghost.1")
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    # Another team's user: a clear refusal, nothing read.
    create_user(_any(cluster.http), "bob", "secret-bob-123", TEAM_B)
    login = cluster.http.post(
        "/acs/api/v1/auth/login", json={"uid": "bob", "password": "secret-bob-123"}
    )
    bob_token = login.json()["token"]
    refused = _cli_as(cluster, bob_token, "task", "logs", task["id"])
    assert refused.returncode == 1
    assert "you may not read the sandbox of task" in refused.stderr
    assert "out-line" not in refused.stdout


def _any(client: httpx.Client) -> Any:
    """testing.auth's HttpClient protocol is narrower than httpx.Client's signatures."""
    return client


def _cli_as(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_MASTER": cluster.url, "TESSERA_HOME": str(cluster.root)}
    env["TESSERA_TOKEN"] = token
    env["TESSERA_CA"] = str(cluster.ca_file)
    return subprocess.run(
        tessera_command(*args), capture_output=True, text=True, timeout=60, env=env
    )
