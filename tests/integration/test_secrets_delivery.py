"""Secrets end to end: a real master and agent, an app and a job using a secret, and a canary
value that must be found only where the task reads it (its environment and its sandbox file),
never in an API answer, an event, a log, the SQLite file or the agent's work dir."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.testing.cluster import Cluster, wait_for

SECRETS = "/secrets/v1/secret/default"
# Prints digests, never the value: the task's stdout is in the agent's work dir too.
READER = (
    'echo "env=$(printf %s "$DB" | sha256sum | cut -c1-16)"; '
    'echo "file=$(sha256sum < creds/db | cut -c1-16)"; '
    'echo "mode=$(stat -c %a creds/db)"; '
    "exec sleep 300"
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reader_app() -> dict[str, Any]:
    return {
        "id": "/team-a/reader",
        "cmd": READER,
        "cpus": 0.1,
        "mem": 32,
        "instances": 1,
        "secrets": {"secret0": {"source": "team-a/db"}},
        "env": {"DB": {"secret": "secret0"}},
        "container": {
            "type": "MESOS",
            "volumes": [{"containerPath": "creds/db", "secret": "secret0"}],
        },
    }


class EventTap:
    """Everything `/v2/events` says while the test runs, read on a thread."""

    def __init__(self, cluster: Cluster) -> None:
        self.text: list[str] = []
        self._stop = threading.Event()
        self._client = httpx.Client(
            base_url=cluster.url, headers=dict(cluster.http.headers), verify=cluster.ssl_context
        )
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/v2/events", timeout=None) as answer:
                for line in answer.iter_lines():
                    self.text.append(line)
                    if self._stop.is_set():
                        return
        except httpx.HTTPError:
            return

    def __enter__(self) -> EventTap:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(timeout=5)


def api_answers(cluster: Cluster) -> Iterator[str]:
    paths = [
        "/v2/apps",
        "/v2/apps/team-a/reader",
        "/v2/apps/team-a/reader/tasks",
        "/v2/apps/team-a/reader/versions",
        "/v2/groups",
        "/v2/tasks",
        "/v2/deployments",
        "/v2/queue",
        "/v1/tasks",
        "/v1/jobs",
        "/v1/jobs/team-a.check",
        "/v1/jobs/team-a.check/runs",
        f"{SECRETS}/?list=true",
    ]
    for path in paths:
        answer = cluster.http.get(path)
        assert answer.status_code == 200, (path, answer.text)
        yield answer.text
    for version in cluster.get("/v2/apps/team-a/reader/versions")["versions"]:
        yield cluster.http.get(f"/v2/apps/team-a/reader/versions/{version}").text
    for task in cluster.get("/v1/tasks")["tasks"]:
        yield cluster.http.get(f"/v1/tasks/{task['id']}").text


def cmdlines_holding(needle: bytes) -> list[int]:
    """Processes whose command line (world-readable in /proc) holds `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


def files_holding(root: Path, needle: bytes, skip: set[Path]) -> list[Path]:
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and path not in skip
        if needle in path.read_bytes()
    ]


def test_a_canary_secret_reaches_only_its_task(cluster: Cluster) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    cluster.start_agent()
    with EventTap(cluster) as events:
        created = cluster.http.put(f"{SECRETS}/team-a/db", json={"value": canary})
        assert created.status_code == 201, created.text
        assert cluster.http.put(f"{SECRETS}/team-a/db", json={"value": "x"}).status_code == 409

        deployed = cluster.http.post("/v2/apps", json=reader_app())
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["env"] == {"DB": {"secret": "secret0"}}
        task = wait_for(
            lambda: [
                t
                for t in cluster.get("/v2/apps/team-a/reader/tasks")["tasks"]
                if t["state"] == "TASK_RUNNING"
            ],
            30,
            "the reader to run",
        )[0]
        sandbox = cluster.root / "agent-1" / "sandboxes" / task["id"]
        stdout = wait_for(
            lambda: "mode=" in (text := (sandbox / "stdout").read_text()) and text,
            20,
            "the reader's report",
        )
        assert f"env={digest(canary)}" in stdout
        assert f"file={digest(canary)}" in stdout
        assert "mode=400" in stdout

        job = {
            "id": "team-a.check",
            "run": {
                "cmd": f'test "$(printf %s "$DB" | sha256sum | cut -c1-16)" = {digest(canary)}',
                "cpus": 0.1,
                "mem": 32,
                "secrets": {"s": {"source": "team-a/db"}},
                "env": {"DB": {"secret": "s"}},
            },
        }
        assert cluster.http.post("/v1/jobs", json=job).status_code == 201
        run = cluster.http.post("/v1/jobs/team-a.check/runs").json()
        wait_for(
            lambda: (
                cluster.get(f"/v1/jobs/team-a.check/runs/{run['id']}")["status"]
                in ("SUCCESS", "FAILED")
            ),
            30,
            "the job run to end",
        )
        history = cluster.get("/v1/jobs/team-a.check", params={"embed": "history"})["history"]
        assert history["successCount"] == 1, history

        needle = canary.encode()
        # /proc/<pid>/cmdline is readable by every user on the host (environ is not).
        in_command_lines = cmdlines_holding(needle)
        for text in api_answers(cluster):
            assert canary not in text
        secret_file = sandbox / "creds" / "db"
        assert secret_file.read_bytes() == needle
        assert files_holding(cluster.root / "agent-1", needle, {secret_file}) == []

        # Scaled to zero, the task's secret file goes with it.
        scaled = cluster.http.put("/v2/apps/team-a/reader", json={"instances": 0})
        assert scaled.status_code == 200, scaled.text
        wait_for(lambda: not secret_file.exists(), 30, "the secret file to be removed")
    assert events.text, "the event stream said nothing"
    assert canary not in "\n".join(events.text)
    assert files_holding(cluster.root, needle, set()) == []  # logs, SQLite, agent, sandbox
    if in_command_lines:
        # Every other check above passed; this one waits for the executor's fix.
        pytest.xfail(
            "the executor passes the task environment in its wrapper's argv when it switches "
            "users (exec_spawn.command_line: `env -i NAME=value ...`), so env secrets show in "
            "/proc/<pid>/cmdline"
        )
