"""Container apps and jobs through a real master and agent: Marathon's container fields,
bridged ports, forcePullImage, pull failures in the queue, and agent kill -9 during a pull
and during a run. One registry and one cluster serve the whole module."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.agent.images.build import DEFAULT_PATH, ContainerConfig, file
from tessera.testing.cluster import Cluster, wait_for
from tessera.testing.containers import HELLO, agent_leftovers, container_support, push_busybox
from tessera.testing.registry import DownRegistry, Registry, StallingProxy, unique_repository

pytestmark = pytest.mark.timeout(180)

WHY_NOT = container_support()
if WHY_NOT:
    pytest.skip(WHY_NOT, allow_module_level=True)

WEB = ContainerConfig(env=(DEFAULT_PATH,), cmd=("httpd", "-f", "-p", "80", "-h", "/www"))


@dataclass
class Setup:
    cluster: Cluster
    registry: Registry
    proxy: StallingProxy
    down: DownRegistry
    web: str
    marker: str

    def agent_flags(self) -> list[str]:
        insecure = ",".join([self.registry.host, self.proxy.host, self.down.host])
        return [
            "--insecure-registries",
            insecure,
            "--bridge",
            f"tst{self.marker[-8:]}",
            "--bridge-subnet",
            f"10.252.{uuid.UUID(self.marker[-32:]).int % 200 + 20}.0/24",
            "--image-pull-stall-timeout",
            "3",
        ]

    def start_agent(self) -> None:
        self.cluster.start_agent(
            resources="cpus:2;mem:2048;disk:2000;ports:[31700-31799]", extra=self.agent_flags()
        )

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.cluster.http.post(path, json=body)
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    def app(self, app_id: str) -> dict[str, Any]:
        answer = self.cluster.get(f"/v2/apps{app_id}", params={"embed": "app.tasks"})
        found: dict[str, Any] = answer["app"]
        return found

    def running_task(self, app_id: str, timeout: float = 30) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            tasks = [t for t in self.app(app_id)["tasks"] if t["state"] == "TASK_RUNNING"]
            return tasks[0] if tasks else None

        found: dict[str, Any] = wait_for(running, timeout, f"{app_id} to run")
        return found

    def remove(self, app_id: str) -> None:
        self.cluster.http.delete(f"/v2/apps{app_id}", params={"force": "true"})
        try:
            wait_for(lambda: not _live_tasks(self, app_id), 20, f"{app_id} to stop")
        except AssertionError:
            print(_live_tasks(self, app_id))
            print("agent log:", (self.cluster.root / "agent-1.log").read_text()[-6000:])
            raise


def bridged_app(app_id: str, image: str, container_port: int = 80, **fields: Any) -> dict[str, Any]:
    """A Marathon app of `image` with one port mapping on the bridge."""
    return {
        "id": app_id,
        "cpus": 0.1,
        "mem": 64,
        "container": {
            "type": fields.pop("type", "DOCKER"),
            "docker": {"image": image, "forcePullImage": fields.pop("force_pull", False)},
            "portMappings": [{"containerPort": container_port, "hostPort": 0, "name": "http"}],
        },
        "networks": [{"mode": "container/bridge"}],
        **fields,
    }


def _live_tasks(setup: Setup, app_id: str) -> list[dict[str, Any]]:
    tasks = setup.cluster.get("/v1/tasks")["tasks"]
    return [t for t in tasks if t.get("appId") == app_id and t["state"] not in _ENDED]


_ENDED = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_GONE"}


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    marker = f"tcl{uuid.uuid4().hex}"
    root = Path(tempfile.mkdtemp(prefix=f"{marker[:12]}-"))
    root.chmod(0o755)
    with (
        Registry() as registry,
        StallingProxy(registry.url, rate=0) as proxy,
        DownRegistry() as down,
    ):
        web = push_busybox(registry.host, unique_repository("web"), config=WEB)
        cluster = Cluster(root)
        made = Setup(cluster, registry, proxy, down, web, marker)
        try:
            cluster.start_master()
            made.start_agent()
            yield made
        finally:
            cluster.stop()  # the agent kills its tasks as it stops (--kill-tasks-on-exit)
            agent_dir = root / "agent-1"
            agent_id = (agent_dir / "agent-id").read_text().strip()
            left = agent_leftovers(agent_dir, agent_id)
            shutil.rmtree(root, ignore_errors=True)
            assert left == [], f"left behind: {left}"


def _get(url: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_bridged_docker_app_serves_on_its_host_port(setup: Setup) -> None:
    app_id = f"/ctr/web-{uuid.uuid4().hex[:6]}"
    # An HTTP check through the host port, and a command check that can only pass inside
    # the container (the host has no /www).
    checks = [
        {"protocol": "MESOS_HTTP", "portIndex": 0, "path": "/", "intervalSeconds": 1},
        {"protocol": "COMMAND", "command": {"value": "test -f /www/index.html"}},
    ]
    setup.post("/v2/apps", bridged_app(app_id, setup.web, healthChecks=checks))
    task = setup.running_task(app_id)
    wait_for(lambda: setup.app(app_id)["tasksHealthy"] == 1, 20, "both checks to pass")
    assert task["ipAddresses"][0]["ipAddress"].startswith("10.252.")
    assert _get(f"http://{task['host']}:{task['ports'][0]}/") == HELLO
    assert _get(f"http://{task['ipAddresses'][0]['ipAddress']}:80/") == HELLO
    shown = setup.app(app_id)
    assert shown["container"]["docker"]["image"] == setup.web
    assert shown["container"]["portMappings"][0]["containerPort"] == 80
    setup.remove(app_id)


def test_container_ports_in_the_environment_of_a_mesos_container(setup: Setup) -> None:
    app_id = f"/ctr/env-{uuid.uuid4().hex[:6]}"
    script = 'echo "ports=$PORT0,$PORT_HTTP sandbox=$MESOS_SANDBOX"; exec sleep 600'
    app = bridged_app(app_id, setup.web, 8080, type="MESOS", cmd=script)
    setup.post("/v2/apps", app)
    task = setup.running_task(app_id)
    stdout = setup.cluster.root / "agent-1" / "sandboxes" / task["id"] / "stdout"
    wait_for(lambda: stdout.exists() and stdout.read_text(), 10, "the task's output")
    assert stdout.read_text().strip() == "ports=8080,8080 sandbox=/mnt/mesos/sandbox"
    setup.remove(app_id)


def test_force_pull_picks_up_a_repushed_tag(setup: Setup) -> None:
    repository = unique_repository("mutable")
    reference = push_busybox(setup.registry.host, repository, "v1", config=WEB)
    app_id = f"/ctr/mutable-{uuid.uuid4().hex[:6]}"
    setup.post("/v2/apps", bridged_app(app_id, reference, force_pull=True))
    first = setup.running_task(app_id)
    assert _get(f"http://{first['host']}:{first['ports'][0]}/") == HELLO
    changed = (file("www/index.html", b"version two\n"),)
    push_busybox(setup.registry.host, repository, "v1", config=WEB, extra=changed)
    setup.post(f"/v2/apps{app_id}/restart", {})

    def replaced() -> dict[str, Any] | None:
        task = setup.running_task(app_id)
        return task if task["id"] != first["id"] else None

    second = wait_for(replaced, 30, "the restarted instance")
    assert _get(f"http://{second['host']}:{second['ports'][0]}/") == "version two\n"
    setup.remove(app_id)


def _failure_in_queue(setup: Setup, app_id: str) -> str:
    def failure() -> str | None:
        for entry in setup.cluster.get("/v2/queue")["queue"]:
            if entry["app"]["id"] == app_id and entry["app"].get("lastTaskFailure"):
                message: str = entry["app"]["lastTaskFailure"]["message"]
                return message
        return None

    found: str = wait_for(failure, 30, f"a failure of {app_id} in /v2/queue")
    return found


@pytest.mark.parametrize(
    ("case", "expected"),
    [("unknown-tag", "not found"), ("registry-down", "unreachable")],
)
def test_pull_failures_wait_in_the_queue_with_their_reason(
    setup: Setup, case: str, expected: str
) -> None:
    if case == "unknown-tag":
        image = f"{setup.registry.host}/{unique_repository('missing')}:nope"
    else:
        image = f"{setup.down.host}/team/app:1.0"
    app_id = f"/ctr/{case}-{uuid.uuid4().hex[:6]}"
    setup.post(
        "/v2/apps",
        {"id": app_id, "cpus": 0.1, "mem": 32, "container": {"docker": {"image": image}}},
    )
    message = _failure_in_queue(setup, app_id)
    assert message.startswith("image pull failed: "), message
    assert image.split(":")[0] in message and expected in message.lower(), message
    setup.remove(app_id)


def test_agent_kill_9_during_a_run_keeps_the_container(setup: Setup) -> None:
    app_id = f"/ctr/survivor-{uuid.uuid4().hex[:6]}"
    # Not replaced while its agent restarts (heartbeats here are 0.5 s; a loaded machine
    # can take longer than three of them to bring the agent back).
    patient = {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 120}
    setup.post("/v2/apps", bridged_app(app_id, setup.web, unreachableStrategy=patient))
    task = setup.running_task(app_id)
    url = f"http://{task['host']}:{task['ports'][0]}/"
    assert _get(url) == HELLO
    agent = setup.cluster.agents.pop()
    agent.kill9()
    assert _get(url) == HELLO  # the container does not depend on its agent
    setup.start_agent()
    time.sleep(1.5)
    assert setup.running_task(app_id)["id"] == task["id"]
    assert _get(url) == HELLO
    began = time.monotonic()
    setup.remove(app_id)
    print(f"removed in {time.monotonic() - began:.1f} s")


def test_agent_kill_9_during_a_pull(setup: Setup) -> None:
    repository = unique_repository("slow")
    # A layer of its own (layers already on the agent are not fetched again), larger than
    # what the proxy lets through before it stalls.
    own = (file("data/blob", os.urandom(256 * 1024)),)
    push_busybox(setup.registry.host, repository, "v1", config=WEB, extra=own)
    image = f"{setup.proxy.host}/{repository}:v1"
    app_id = f"/ctr/slow-{uuid.uuid4().hex[:6]}"
    setup.post(
        "/v2/apps",
        {
            "id": app_id,
            "cpus": 0.1,
            "mem": 64,
            "container": {"docker": {"image": image}},
            "upgradeStrategy": {"minimumHealthCapacity": 0},
        },
    )
    wait_for(lambda: setup.proxy.stalled, 20, "the pull to stall")
    agent = setup.cluster.agents.pop()
    agent.kill9()
    setup.proxy.rate = 10_000_000  # the registry recovers
    setup.proxy.pass_bytes = 1 << 40
    setup.start_agent()
    task = setup.running_task(app_id, timeout=60)
    layers = setup.cluster.root / "agent-1" / "images" / "layers"
    # Every layer directory is complete: none was left half-unpacked by the kill.
    assert all((layer / "done").exists() for layer in layers.iterdir() if layer.is_dir())
    assert task["state"] == "TASK_RUNNING"
    setup.remove(app_id)


def test_a_metronome_job_runs_in_a_container(setup: Setup) -> None:
    job_id = f"ctrjob{uuid.uuid4().hex[:6]}"
    setup.post(
        "/v1/jobs",
        {
            "id": job_id,
            "run": {
                "cmd": "test -x /bin/busybox && echo ok from the image",
                "cpus": 0.1,
                "mem": 32,
                "docker": {"image": setup.web},
            },
        },
    )
    run = setup.post(f"/v1/jobs/{job_id}/runs", {})

    def finished() -> str | None:
        response = setup.cluster.http.get(f"/v1/jobs/{job_id}/runs/{run['id']}")
        if response.status_code == 404:  # finished runs move to the history
            history = setup.cluster.get(f"/v1/jobs/{job_id}", params={"embed": "history"})
            if history["history"]["successCount"]:
                return "SUCCESS"
            if history["history"]["failureCount"]:
                return "FAILED"
            return None
        status: str = response.json()["status"]
        return status if status in ("SUCCESS", "FAILED") else None

    assert wait_for(finished, 60, "the job run") == "SUCCESS"
    with contextlib.suppress(httpx.HTTPError):
        setup.cluster.http.delete(f"/v1/jobs/{job_id}")


def test_tessera_run_with_an_image(setup: Setup) -> None:
    done = setup.cluster.cli("run", "--image", setup.web, "--wait", "--", "cat /www/index.html")
    assert done.returncode == 0, done.stderr
    assert HELLO in done.stdout
    failed = setup.cluster.cli("run", "--image", f"{setup.registry.host}/none:1", "--wait", "true")
    assert failed.returncode != 0
    assert "image pull failed" in failed.stderr


def test_kills_wait_out_their_grace_periods_side_by_side(setup: Setup) -> None:
    # sleep as PID 1 never sees SIGTERM: each kill takes the whole grace period.
    body = {
        "name": "ignores-term",
        "args": ["sleep", "600"],
        "cpus": 0.05,
        "mem": 16,
        "killGracePeriodSeconds": 2,
        "container": {"type": "MESOS", "docker": {"image": setup.web}},
    }
    ids = [setup.cluster.launch(**body)["id"] for _ in range(3)]
    for task_id in ids:
        setup.cluster.wait_state(task_id, "TASK_RUNNING")
    started = time.monotonic()
    for task_id in ids:
        setup.cluster.http.delete(f"/v1/tasks/{task_id}")
    for task_id in ids:
        setup.cluster.wait_state(task_id, "TASK_KILLED")
    took = time.monotonic() - started
    assert 1.9 < took < 4.5, f"3 kills of 2 s each took {took:.1f} s"


def test_a_container_that_cannot_start_never_reports_running(setup: Setup) -> None:
    body = {
        "name": "no-program",
        "args": ["no-such-program"],
        "cpus": 0.05,
        "mem": 16,
        "container": {"type": "MESOS", "docker": {"image": setup.web}},
    }
    task = setup.cluster.wait_state(setup.cluster.launch(**body)["id"], "TASK_FAILED")
    assert task["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "executable file not found" in task["message"]
    assert task["startedAt"] is None
