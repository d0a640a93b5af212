"""Marathon services end to end: real master, agent and task processes on loopback."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tessera.testing.cluster import Cluster, task_processes, wait_for

# A web server that answers 200 with its VERSION, keeps serving for a second after SIGTERM
# (a well-behaved service drains), fails /health once a file `unhealthy` appears in its
# sandbox, and answers /ready only once a file `ready` does.
SERVER = """exec python3 -c '
import http.server as s, os, signal, threading
class H(s.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = not (self.path == "/health" and os.path.exists("unhealthy"))
        ok = ok and not (self.path == "/ready" and not os.path.exists("ready"))
        self.send_response(200 if ok else 500); self.end_headers()
        self.wfile.write(os.environ.get("VERSION", "v1").encode())
    def log_message(self, *a): pass
signal.signal(signal.SIGTERM, lambda *a: threading.Timer(1.0, lambda: os._exit(0)).start())
s.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), H).serve_forever()'"""

HEALTH = {
    "protocol": "HTTP",
    "path": "/health",
    "gracePeriodSeconds": 5,
    "intervalSeconds": 1,
    "timeoutSeconds": 1,
    "maxConsecutiveFailures": 2,
}


def web_app(app_id: str = "/web", instances: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "id": app_id,
        "cmd": SERVER,
        "instances": instances,
        "cpus": 0.1,
        "mem": 64,
        "healthChecks": [HEALTH],
        "taskKillGracePeriodSeconds": 3,
        **extra,
    }


def deployed(cluster: Cluster, timeout: float = 30.0) -> None:
    wait_for(lambda: cluster.get("/v2/deployments") == [], timeout, "deployments to finish")


def app(cluster: Cluster, app_id: str = "web") -> dict[str, Any]:
    shown: dict[str, Any] = cluster.get(f"/v2/apps/{app_id}")["app"]
    return shown


def test_app_runs_is_replaced_scales_and_is_removed(cluster: Cluster) -> None:
    cluster.start_agent()
    response = cluster.http.post("/v2/apps", json=web_app())
    assert response.status_code == 201, response.text
    deployed(cluster)
    web = app(cluster)
    assert (web["tasksRunning"], web["tasksHealthy"]) == (3, 3)
    for task in web["tasks"]:
        assert httpx.get(f"http://{task['host']}:{task['ports'][0]}/").text == "v1"
        assert task["healthCheckResults"][0]["alive"] is True
    # a killed instance is replaced
    victim = web["tasks"][0]["id"]
    killed = cluster.http.delete(f"/v2/apps/web/tasks/{victim}")
    assert killed.status_code == 200 and killed.json()["task"]["id"] == victim

    def replaced() -> bool:
        now = app(cluster)
        return now["tasksHealthy"] == 3 and victim not in {t["id"] for t in now["tasks"]}

    wait_for(replaced, 30, "a replacement")
    # scale down: YOUNGEST_FIRST keeps the oldest
    oldest = min(app(cluster)["tasks"], key=lambda t: t["startedAt"])["id"]
    assert cluster.http.put("/v2/apps/web", json={"instances": 1}).status_code == 200
    deployed(cluster)
    assert [t["id"] for t in app(cluster)["tasks"]] == [oldest]
    processes = task_processes(oldest)
    assert processes
    # remove: every task is killed, no process is left
    assert cluster.http.delete("/v2/apps/web").status_code == 200
    deployed(cluster)
    assert cluster.http.get("/v2/apps/web").status_code == 404
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
    states = {t["state"] for t in cluster.get("/v1/tasks")["tasks"]}
    assert states == {"TASK_KILLED"}


def test_rolling_restart_loses_no_request(cluster: Cluster) -> None:
    cluster.start_agent()
    cluster.http.post("/v2/apps", json=web_app(env={"VERSION": "v1"}))
    deployed(cluster)
    failures: list[str] = []
    healthy_counts: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=2, headers=cluster.headers, verify=cluster.ssl_context) as client:
            turn = 0
            while not stop.is_set():
                web = client.get(f"{cluster.url}/v2/apps/web").json()["app"]
                healthy_counts.append(web["tasksHealthy"])
                serving = [
                    t
                    for t in web["tasks"]
                    if t["state"] == "TASK_RUNNING"
                    and t["healthCheckResults"]
                    and t["healthCheckResults"][0]["alive"]
                ]
                for task in serving[turn % max(1, len(serving)) :][:1]:
                    try:
                        client.get(f"http://{task['host']}:{task['ports'][0]}/")
                    except httpx.HTTPError as error:
                        failures.append(f"{task['id']}: {error!r}")
                turn += 1

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        change = cluster.http.put("/v2/apps/web", json={"env": {"VERSION": "v2"}})
        assert change.status_code == 200
        plan = cluster.get("/v2/deployments")[0]
        assert plan["steps"] == [{"actions": [{"action": "RestartApplication", "app": "/web"}]}]
        deployed(cluster, 45)
    finally:
        stop.set()
        poller.join()
    assert failures == []
    assert min(healthy_counts) >= 3
    web = app(cluster)
    assert web["tasksHealthy"] == 3
    for task in web["tasks"]:
        assert httpx.get(f"http://{task['host']}:{task['ports'][0]}/").text == "v2"


def test_crashing_app_backs_off(cluster: Cluster) -> None:
    cluster.start_agent()
    crash = {
        "id": "/crash",
        "cmd": "exit 3",
        "cpus": 0.1,
        "mem": 32,
        "backoffSeconds": 1,
        "backoffFactor": 2,
        "maxLaunchDelaySeconds": 60,
    }
    cluster.http.post("/v2/apps", json=crash)
    time.sleep(5)
    failed = [t for t in cluster.get("/v1/tasks")["tasks"] if t["state"] == "TASK_FAILED"]
    # 1 + 1 + 2 seconds of delay fit in 5 s: about 3 or 4 launches, not hundreds
    assert 2 <= len(failed) <= 5, len(failed)
    queue = cluster.get("/v2/queue")["queue"]
    assert [q["app"]["id"] for q in queue] == ["/crash"]
    assert queue[0]["delay"]["timeLeftSeconds"] >= 0
    shown = cluster.get("/v2/apps/crash", params={"embed": "app.lastTaskFailure"})["app"]
    assert shown["lastTaskFailure"]["state"] == "TASK_FAILED"
    assert cluster.http.delete("/v2/queue/crash/delay").status_code == 204


def test_unhealthy_instance_is_replaced(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_agent()
    cluster.http.post("/v2/apps", json=web_app(instances=2))
    deployed(cluster)
    victim = app(cluster)["tasks"][0]["id"]
    sandbox = next((tmp_path / "agent-1" / "sandboxes").glob(f"{victim}*"))
    (sandbox / "unhealthy").write_text("")

    def replaced() -> bool:
        now = app(cluster)
        return now["tasksHealthy"] == 2 and victim not in {t["id"] for t in now["tasks"]}

    wait_for(replaced, 30, "the unhealthy instance to be replaced")
    ended = cluster.get(f"/v1/tasks/{victim}")
    assert ended["state"] in ("TASK_KILLED", "TASK_FAILED")


def test_event_stream_delivers_marathon_events(cluster: Cluster) -> None:
    cluster.start_agent()
    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(timeout=30, headers=cluster.headers, verify=cluster.ssl_context) as client,
            client.stream("GET", f"{cluster.url}/v2/events") as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    seen.append(line[7:])
                    ready.set()
                    if (
                        line == "event: group_change_success"
                        and "health_status_changed_event" in seen
                    ):
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    cluster.http.post("/v2/apps", json=web_app(instances=1))
    listener.join(30)
    for kind in (
        "event_stream_attached",
        "api_post_event",
        "deployment_info",
        "instance_changed_event",
        "status_update_event",
        "health_status_changed_event",
        "deployment_step_success",
        "deployment_success",
        "group_change_success",
    ):
        assert kind in seen, (kind, seen)


def test_stalled_deployment_fails_and_rolls_back(cluster: Cluster) -> None:
    cluster.start_agent()
    cluster.http.post("/v2/apps", json=web_app(instances=2))
    deployed(cluster)
    before = {t["id"] for t in app(cluster)["tasks"]}
    failures: list[dict[str, Any]] = []

    def listen() -> None:
        with (
            httpx.Client(timeout=60, headers=cluster.headers, verify=cluster.ssl_context) as client,
            client.stream(
                "GET", f"{cluster.url}/v2/events", params={"event_type": "deployment_failed"}
            ) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data: ") and "deployment_failed" in line:
                    failures.append(httpx.Response(200, content=line[6:]).json())
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    never_healthy = {"cmd": "sleep 600", "upgradeStrategy": {"progressDeadlineSeconds": 3}}
    stuck = cluster.http.put("/v2/apps/web", json=never_healthy).json()
    wait_for(lambda: failures, 30, "the deployment to fail")
    assert failures[0]["id"] == stuck["deploymentId"]
    assert "progressDeadlineSeconds" in failures[0]["reason"]
    deployed(cluster)
    web = app(cluster)
    assert web["cmd"] == SERVER and web["tasksHealthy"] == 2
    # the instances of the good version were never touched
    assert {t["id"] for t in web["tasks"]} == before


def test_scale_down_kills_oldest_first_when_asked(cluster: Cluster) -> None:
    cluster.start_agent()
    sleeper = {"id": "/sleep", "cmd": "sleep 600", "cpus": 0.1, "mem": 32, "instances": 1}
    cluster.http.post("/v2/apps", json={**sleeper, "killSelection": "OLDEST_FIRST"})
    deployed(cluster)
    first = app(cluster, "sleep")["tasks"][0]["id"]
    cluster.http.put("/v2/apps/sleep", json={"instances": 3})
    deployed(cluster)
    cluster.http.put("/v2/apps/sleep", json={"instances": 2})
    deployed(cluster)
    assert first not in {t["id"] for t in app(cluster, "sleep")["tasks"]}


def test_instance_on_unreachable_agent_is_replaced(cluster: Cluster) -> None:
    cluster.start_agent("agent-1")
    sleeper = {
        "id": "/sleep",
        "cmd": "sleep 600",
        "cpus": 0.1,
        "mem": 32,
        "unreachableStrategy": {"inactiveAfterSeconds": 1, "expungeAfterSeconds": 2},
    }
    cluster.http.post("/v2/apps", json=sleeper)
    deployed(cluster)
    lost = app(cluster, "sleep")["tasks"][0]
    frozen = cluster.agents[0]
    cluster.start_agent("agent-2", host="127.0.0.2", resources="cpus:1;mem:512;ports:[31100-31199]")
    frozen.signal(signal.SIGSTOP)
    try:

        def replaced() -> bool:
            tasks = app(cluster, "sleep")["tasks"]
            return any(t["state"] == "TASK_RUNNING" and t["host"] == "127.0.0.2" for t in tasks)

        wait_for(replaced, 20, "a replacement on the other agent")
        # after expungeAfterSeconds the lost instance is given up: killed when it returns
        wait_for(lambda: cluster.task(lost["id"])["state"] == "TASK_KILLING", 20, "the expunge")
    finally:
        frozen.signal(signal.SIGCONT)
    wait_for(lambda: cluster.task(lost["id"])["state"] == "TASK_KILLED", 20, "the kill")
    assert [t["host"] for t in app(cluster, "sleep")["tasks"]] == ["127.0.0.2"]


def test_readiness_gates_the_deployment(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_agent()
    ready_check = {
        "name": "warm",
        "path": "/ready",
        "portName": "default",
        "intervalSeconds": 2,
        "timeoutSeconds": 1,
    }
    response = cluster.http.post(
        "/v2/apps", json=web_app(instances=1, readinessChecks=[{**ready_check}])
    )
    assert response.status_code == 201, response.text
    wait_for(lambda: app(cluster)["tasksHealthy"] == 1, 20, "a healthy instance")
    time.sleep(1.5)
    (deployment,) = cluster.get("/v2/deployments")
    results = deployment["currentActions"][0]["readinessCheckResults"]
    assert [(r["name"], r["ready"]) for r in results] == [("warm", False)]
    task_id = results[0]["taskId"]
    sandbox = next((tmp_path / "agent-1" / "sandboxes").glob(f"{task_id}*"))
    (sandbox / "ready").write_text("")
    deployed(cluster)
    shown = app(cluster)
    assert shown["readinessCheckResults"] == [
        {"name": "warm", "taskId": task_id, "ready": True, "lastResponse": None}
    ]
