"""Health checks and fetch end to end: a real master, a real agent, real task processes."""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.testing.cluster import Cluster, wait_for

FAST = {"gracePeriodSeconds": 30, "intervalSeconds": 1, "timeoutSeconds": 1, "delaySeconds": 0}


def start_agent(cluster: Cluster) -> str:
    """An agent with a port range of its own: other test runs on this machine use 31000+."""
    base = random.randrange(20000, 29000, 100)
    resources = f"cpus:2;mem:2048;disk:1000;ports:[{base}-{base + 99}]"
    cluster.start_agent(resources=resources)
    return resources


def healthy_is(cluster: Cluster, task_id: str, value: bool | None) -> dict[str, Any] | None:
    task = cluster.task(task_id)
    return task if task["healthy"] is value else None


def test_http_server_becomes_healthy(cluster: Cluster) -> None:
    start_agent(cluster)
    task = cluster.launch(
        name="web",
        cmd="exec python3 -m http.server --bind 127.0.0.1 --directory . $PORT0",
        portDefinitions=[{"port": 0, "name": "http"}],
        healthChecks=[{"protocol": "MESOS_HTTP", "path": "/", **FAST}],
        readinessChecks=[{"portName": "http", "intervalSeconds": 2, "timeoutSeconds": 1}],
    )
    assert task["healthy"] is None
    seen = wait_for(lambda: healthy_is(cluster, task["id"], True), 20, "the task to be healthy")
    assert seen["state"] == "TASK_RUNNING"
    wait_for(lambda: cluster.task(task["id"])["ready"] is True, 10, "the task to be ready")


def test_failing_check_kills_the_task(cluster: Cluster) -> None:
    start_agent(cluster)
    check = {**FAST, "protocol": "COMMAND", "command": {"value": "test -f ok"}}
    task = cluster.launch(
        name="sick",
        cmd="touch ok; sleep 2; rm ok; exec sleep 300",
        healthChecks=[{**check, "maxConsecutiveFailures": 2}],
        killGracePeriodSeconds=0.5,
    )
    wait_for(lambda: healthy_is(cluster, task["id"], True), 15, "the task to be healthy")
    ended = cluster.wait_state(task["id"], "TASK_KILLED", "TASK_FAILED", timeout=15)
    assert ended["state"] == "TASK_KILLED"
    assert ended["healthy"] is False
    assert ended["reason"] == "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
    assert "killed after 2 consecutive failures of health check 0" in ended["message"]


def test_bad_checks_are_refused(cluster: Cluster) -> None:
    response = cluster.http.post(
        "/v1/tasks",
        json={"cmd": "sleep 1", "healthChecks": [{"protocol": "HTTP", "portIndex": 0}]},
    )
    assert response.status_code == 422
    assert "healthChecks/0/portIndex" in response.text


def test_health_survives_a_master_restart(cluster: Cluster, tmp_path: Path) -> None:
    start_agent(cluster)
    # Never killed for failing (0, as in Marathon): the restart takes longer than 3 failures.
    check = {
        **FAST,
        "protocol": "COMMAND",
        "command": {"value": "test -f ok"},
        "maxConsecutiveFailures": 0,
    }
    task = cluster.launch(name="steady", cmd="touch ok; exec sleep 300", healthChecks=[check])
    wait_for(lambda: healthy_is(cluster, task["id"], True), 15, "the task to be healthy")
    assert cluster.master is not None
    cluster.master.kill9()
    # While no master listens, the task turns unhealthy: the agent keeps checking.
    (cluster.root / "agent-1" / "sandboxes" / task["id"] / "ok").unlink()
    cluster.start_master()
    wait_for(lambda: healthy_is(cluster, task["id"], False), 20, "the new master to see it")
    assert cluster.task(task["id"])["state"] == "TASK_RUNNING"
    (cluster.root / "agent-1" / "sandboxes" / task["id"] / "ok").touch()
    wait_for(lambda: healthy_is(cluster, task["id"], True), 15, "the task healthy again")


def test_checks_resume_after_an_agent_restart(cluster: Cluster) -> None:
    resources = start_agent(cluster)
    # Never killed for failing (0, as in Marathon): the restart takes longer than 3 failures.
    check = {
        **FAST,
        "protocol": "COMMAND",
        "command": {"value": "test -f ok"},
        "maxConsecutiveFailures": 0,
    }
    task = cluster.launch(name="steady", cmd="touch ok; exec sleep 300", healthChecks=[check])
    wait_for(lambda: healthy_is(cluster, task["id"], True), 15, "the task to be healthy")
    cluster.agents[0].kill9()
    cluster.start_agent(resources=resources)
    (cluster.root / "agent-1" / "sandboxes" / task["id"] / "ok").unlink()
    wait_for(lambda: healthy_is(cluster, task["id"], False), 15, "the recovered task unhealthy")
    assert cluster.task(task["id"])["state"] == "TASK_RUNNING"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "hello.sh").write_text("#!/bin/sh\necho fetched-and-ran\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_then_run_and_a_failed_fetch(cluster: Cluster, file_server: str) -> None:
    start_agent(cluster)
    task = cluster.launch(
        name="fetcher",
        cmd="./hello.sh",
        fetch=[{"uri": f"{file_server}/hello.sh", "executable": True}],
    )
    done = cluster.wait_state(task["id"], "TASK_FINISHED", "TASK_FAILED")
    assert done["state"] == "TASK_FINISHED", done
    logs = cluster.cli("task", "logs", task["id"])
    assert logs.stdout.strip() == "fetched-and-ran"

    missing = cluster.launch(name="nofile", cmd="true", fetch=[{"uri": f"{file_server}/nope"}])
    failed = cluster.wait_state(missing["id"], "TASK_FAILED", "TASK_FINISHED")
    assert failed["state"] == "TASK_FAILED"
    assert failed["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    assert failed["message"] == f"fetching {file_server}/nope failed: HTTP 404"
