"""`tessera up --detach` and `tessera down` as a newcomer runs them: nothing left behind."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tessera.local.demo import DEMO_CONTAINER_PAGE
from tessera.security.ca import cli_client_context
from tessera.testing.cluster import free_port, task_processes, tessera_command, wait_for
from tessera.testing.containers import agent_leftovers, container_support


def _check_container_demo(master: str, headers: dict[str, str], trust: ssl.SSLContext) -> None:
    """The demo's busybox image was built, pushed, pulled and runs bridged and healthy."""

    def healthy() -> dict[str, Any] | None:
        answer = httpx.get(f"{master}/v2/apps/demo/container-web", headers=headers, verify=trust)
        app = answer.json()["app"]
        return app if app["tasksHealthy"] == app["instances"] else None

    app = wait_for(healthy, 30, "the container demo to be healthy")
    for task in app["tasks"]:
        page = httpx.get(f"http://{task['host']}:{task['ports'][0]}/", timeout=5).text
        assert page == DEMO_CONTAINER_PAGE
        assert task["ipAddresses"][0]["ipAddress"].startswith("10.232.")


def _tessera(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_MASTER"}
    env["TESSERA_HOME"] = str(home)
    return subprocess.run(
        tessera_command(*args), capture_output=True, text=True, timeout=timeout, env=env
    )


def test_up_detach_then_down_leaves_nothing(tmp_path: Path) -> None:
    port = str(free_port())
    up = ["up", "--agents", "2", "--port", port, "--detach", "--demo"]
    containers = container_support() is None
    if containers:  # the demo's container service needs a registry
        up += ["--registry", "--registry-port", str(free_port())]
    else:
        print(f"without the container demo: {container_support()}")
    started = _tessera(tmp_path, *up)
    assert started.returncode == 0, started.stderr
    state = json.loads((tmp_path / "local" / "cluster.json").read_text())
    pids = list(state["processes"].values())
    assert len(pids) == 3 + containers and all(psutil.pid_exists(pid) for pid in pids)
    # The credentials' contract: D/admin-token and D/admin-password, 0600.
    work_dir = tmp_path / "local"
    for name in ("admin-token", "admin-password"):
        assert (work_dir / name).stat().st_mode & 0o777 == 0o600, name
    headers = {"Authorization": f"token={(work_dir / 'admin-token').read_text().strip()}"}
    # The API is HTTPS with the cluster CA, which `tessera up` leaves in D/ca.pem.
    assert state["master_url"].startswith("https://")
    trust = cli_client_context(work_dir / "ca.pem")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{state['master_url']}/v2/apps")  # the system's trust store does not do
    apps = f"{state['master_url']}/v2/apps"
    assert httpx.get(apps, verify=trust).status_code == 401
    assert httpx.get(apps, headers=headers, verify=trust).status_code == 200
    # `tessera token` logs in again as admin and prints a fresh token.
    fresh = _tessera(tmp_path, "token").stdout.strip()
    answer = httpx.get(apps, headers={"Authorization": f"Bearer {fresh}"}, verify=trust)
    assert answer.status_code == 200
    if containers:
        _check_container_demo(state["master_url"], headers, trust)

    # The CLI finds the running local cluster without --master.
    agents = json.loads(_tessera(tmp_path, "agent", "list", "--json").stdout)
    assert len(agents) == 2
    assert {a["hostname"] for a in agents} == {"127.0.0.2", "127.0.0.3"}
    ranges = sorted(tuple(a["resources"]["ports"][0]) for a in agents)
    assert ranges[0][1] < ranges[1][0], "local agents must not share a port range"
    tasks = json.loads(_tessera(tmp_path, "task", "list", "--json").stdout)
    ticker = next(t for t in tasks if t["name"] == "ticker")
    wait_for(lambda: task_processes(ticker["id"]), 20, "the demo ticker to run")

    stopped = _tessera(tmp_path, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(psutil.pid_exists(pid) for pid in pids)
    for agent in agents:
        work_dir = tmp_path / "local" / f"agent-{agent['attributes']['local'][-1]}"
        assert agent_leftovers(work_dir, agent["id"]) == []
    assert task_processes(ticker["id"]) == []
    unreachable = _tessera(tmp_path, "task", "list")
    assert unreachable.returncode == 1
    assert "tessera up" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
