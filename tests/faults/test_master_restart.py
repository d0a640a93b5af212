"""Master restarts on SQLite: `kill -9` under writes, a store older than the agents' view,
a host that rebooted while the master was down, and a restart halfway through a deployment."""

from __future__ import annotations

import json
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tessera.testing.cluster import Cluster, live_task_ids, task_processes, task_trees, wait_for

TINY = {"cpus": 0.01, "mem": 8}


def _pids(task_ids: list[str]) -> dict[str, frozenset[int]]:
    return {task_id: frozenset(p.pid for p in task_processes(task_id)) for task_id in task_ids}


def _running_ids(cluster: Cluster) -> set[str]:
    return {t["id"] for t in cluster.get("/v1/tasks")["tasks"] if t["state"] == "TASK_RUNNING"}


class Writer(threading.Thread):
    """Posts one-off tasks and apps as fast as the master answers; remembers what it was
    told was accepted. Errors and refusals are expected while the master is down."""

    def __init__(self, url: str, headers: dict[str, str], verify: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.verify = verify
        self.url = url
        self.headers = headers
        self.tasks: list[str] = []
        self.apps: list[str] = []
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(
            base_url=self.url, timeout=5, headers=self.headers, verify=self.verify
        ) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                try:
                    if n % 4 == 0:
                        app_id = f"/writes/app-{n}"
                        body = {"id": app_id, "cmd": "sleep 600", "instances": 1, **TINY}
                        if client.post("/v2/apps", json=body).status_code == 201:
                            self.apps.append(app_id)
                        else:
                            self.failed += 1
                    else:
                        response = client.post(
                            "/v1/tasks", json={"name": f"w{n}", "cmd": "sleep 600", **TINY}
                        )
                        if response.status_code == 201:
                            self.tasks.append(response.json()["id"])
                        else:
                            self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                    time.sleep(0.05)


def test_master_kill9_under_writes_loses_nothing_acknowledged(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:8;mem:8192;disk:100;ports:[31000-31999]")
    writer = Writer(cluster.url, cluster.headers, cluster.ssl_context)
    writer.start()
    try:
        wait_for(lambda: len(writer.tasks) >= 30, 30, "30 acknowledged task writes")
        # Everything running at the crash must still run afterwards, in the same processes.
        running = sorted(_running_ids(cluster))
        before = _pids(running)
        assert running and all(before.values())
        acknowledged_before_crash = len(writer.tasks) + len(writer.apps)
        assert cluster.master is not None
        cluster.master.kill9()
        time.sleep(1.0)  # writes keep coming and fail while the master is down
        cluster.start_master()
        wait_for(
            lambda: len(writer.tasks) + len(writer.apps) >= acknowledged_before_crash + 10,
            30,
            "writes to be accepted again",
        )
    finally:
        writer.stopping.set()
        writer.join(10)
    assert writer.failed > 0, "the writer never saw the master down; the test proves nothing"

    known = {t["id"]: t for t in cluster.get("/v1/tasks")["tasks"]}
    missing = [task_id for task_id in writer.tasks if task_id not in known]
    assert missing == [], f"acknowledged tasks lost in the crash: {missing}"
    apps = {a["id"] for a in cluster.get("/v2/apps")["apps"]}
    assert set(writer.apps) <= apps, f"acknowledged apps lost: {set(writer.apps) - apps}"

    wait_for(lambda: cluster.agent_registered("agent-1"), 20, "the agent to re-register")
    wait_for(
        lambda: set(writer.tasks) <= _running_ids(cluster), 60, "every acknowledged task to run"
    )
    assert _pids(running) == before, "a task running at the crash was restarted"
    # One process tree per task: nothing was launched twice across the crash.
    for task_id in writer.tasks:
        assert len(task_trees(task_id)) == 1, f"{task_id} runs more than once"


def _backup(db: Path, to: Path) -> None:
    source = sqlite3.connect(db)
    target = sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def test_task_the_restarted_master_does_not_know_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A master brought back from an older copy of its store (a restored backup) finds an
    agent running a task it never heard of: nothing may run that the master does not know."""
    cluster.start_agent()
    known = cluster.launch(name="known", cmd="sleep 600", **TINY)
    cluster.wait_state(known["id"], "TASK_RUNNING")
    state_db = tmp_path / "master" / "state.db"
    _backup(state_db, tmp_path / "older.db")
    stranger = cluster.launch(name="stranger", cmd="sleep 600", **TINY)
    cluster.wait_state(stranger["id"], "TASK_RUNNING")
    known_pids = _pids([known["id"]])
    stranger_processes = task_processes(stranger["id"])
    assert stranger_processes and all(known_pids.values())

    assert cluster.master is not None
    cluster.master.kill9()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_db}{suffix}").unlink(missing_ok=True)
    (tmp_path / "older.db").rename(state_db)
    cluster.start_master()

    assert cluster.http.get(f"/v1/tasks/{stranger['id']}").status_code == 404
    wait_for(lambda: cluster.agent_registered("agent-1"), 20, "the agent to re-register")
    _gone, alive = psutil.wait_procs(stranger_processes, timeout=15)
    assert alive == [], "the unknown task was left running"
    assert _pids([known["id"]]) == known_pids, "the known task was disturbed"
    assert cluster.task(known["id"])["state"] == "TASK_RUNNING"


def test_expected_task_is_lost_only_after_the_reregistration_window(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The master comes back while the agent's host is rebooting: until the window is over
    its tasks keep their last state; after it the agent is unreachable; when the agent
    returns from the reboot it reports the tasks lost and registers cleanly."""
    agent = cluster.start_agent()
    task = cluster.launch(name="victim", cmd="sleep 600", **TINY)
    cluster.wait_state(task["id"], "TASK_RUNNING")
    assert cluster.master is not None
    cluster.master.kill9()
    # The host "reboots": the agent and its tasks die and the boot ID changes.
    agent.kill9()
    for process in task_processes(task["id"]):
        process.kill()
    checkpoint = next((tmp_path / "agent-1" / "meta" / "tasks").glob("*/task.json"))
    recorded = json.loads(checkpoint.read_text())
    recorded["boot_id"] = "a-boot-before-the-reboot"
    checkpoint.write_text(json.dumps(recorded))

    window = 4.0
    started = time.monotonic()
    cluster.start_master(reregistration_timeout=window)
    # Within the window nothing is concluded about the silent agent.
    while time.monotonic() - started < window - 1.0:
        assert cluster.task(task["id"])["state"] == "TASK_RUNNING"
        time.sleep(0.2)
    cluster.wait_state(task["id"], "TASK_UNREACHABLE", timeout=10)
    assert time.monotonic() - started >= window

    agent.start()
    wait_for(lambda: cluster.agent_registered("agent-1"), 20, "the agent to re-register")
    lost = cluster.wait_state(task["id"], "TASK_LOST", timeout=20)
    assert "reboot" in lost["message"]


# A server that becomes healthy two seconds after it starts, so that a rolling upgrade of
# six instances takes long enough to crash the master in the middle of it.
SLOW_SERVER = """sleep 2; exec python3 -c '
import http.server as s, os
class H(s.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
s.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), H).serve_forever()'"""


def _web(version: str) -> dict[str, Any]:
    return {
        "id": "/roll",
        "cmd": SLOW_SERVER,
        "instances": 6,
        "cpus": 0.05,
        "mem": 32,
        "env": {"VERSION": version},
        "healthChecks": [
            {
                "protocol": "HTTP",
                "path": "/",
                "gracePeriodSeconds": 10,
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "maxConsecutiveFailures": 3,
            }
        ],
        # One new instance at a time, and never fewer than six healthy ones.
        "upgradeStrategy": {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.17},
        "taskKillGracePeriodSeconds": 2,
    }


def _version_of(task_id: str) -> str | None:
    for process in task_processes(task_id):
        try:
            return process.environ().get("VERSION")
        except psutil.Error:
            continue
    return None


def test_master_restart_halfway_through_a_deployment(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:4;mem:4096;disk:100;ports:[31000-31999]")
    assert cluster.http.post("/v2/apps", json=_web("v1")).status_code == 201
    wait_for(lambda: cluster.get("/v2/deployments") == [], 60, "the first deployment")

    assert cluster.http.put("/v2/apps/roll", json=_web("v2")).status_code == 200

    def half_done() -> bool:
        tasks = cluster.get("/v2/apps/roll")["app"]["tasks"]
        new = [t for t in tasks if _version_of(t["id"]) == "v2"]
        return 2 <= len(new) < 6

    wait_for(half_done, 60, "the upgrade to be half done")
    assert cluster.get("/v2/deployments") != []
    assert cluster.master is not None
    cluster.master.kill9()
    cluster.start_master()

    wait_for(lambda: cluster.get("/v2/deployments") == [], 90, "the deployment to finish")
    app = cluster.get("/v2/apps/roll")["app"]
    assert app["env"] == {"VERSION": "v2"}
    assert (app["tasksRunning"], app["tasksHealthy"]) == (6, 6), app
    ids = {t["id"] for t in app["tasks"]}
    assert {_version_of(task_id) for task_id in ids} == {"v2"}

    # No orphan: every task process of the app on this machine belongs to one of the six
    # instances (the old version's are all gone, nothing was launched twice).
    wait_for(lambda: live_task_ids("roll.") == ids, 20, "the old version's processes to be gone")
