"""Jobs end to end with real agents and real task processes: run-now, retries, the CLI,
the queue, a master killed mid-run, concurrency policies and a master down across a
scheduled time (these two drive the jobs controller's clock, not the wall clock)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tessera.cli.daemons import MasterServer
from tessera.clock import SystemClock
from tessera.master.app import create_app
from tessera.master.auth_files import ADMIN_TOKEN
from tessera.master.config import MasterConfig
from tessera.master.controllers.jobs import JobsController
from tessera.master.serving_cert import ServingFiles, ensure_serving_cert
from tessera.store import open_store
from tessera.testing.auth import auth_headers
from tessera.testing.clock import FakeClock
from tessera.testing.cluster import Cluster, wait_for


def _job(job_id: str, cmd: str, **run: Any) -> dict[str, Any]:
    return {"id": job_id, "run": {"cmd": cmd, "cpus": 0.1, "mem": 32, **run}}


def _run(cluster: Cluster, job_id: str, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get(f"/v1/jobs/{job_id}/runs/{run_id}")
    return found


def _wait_run(
    cluster: Cluster, job_id: str, run_id: str, *statuses: str, timeout: float = 20
) -> Any:
    return wait_for(
        lambda: (r := _run(cluster, job_id, run_id))["status"] in statuses and r,
        timeout,
        f"run {run_id} to reach {statuses}",
    )


def _post(cluster: Cluster, path: str, body: Any = None) -> Any:
    response = cluster.http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_run_now_success_failure_cli_and_queue(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_agent(resources="cpus:2;mem:2048;disk:1000;ports:[31000-31010]")
    definition = tmp_path / "hello.yaml"
    definition.write_text(
        "id: hello\nrun:\n  cmd: echo hello from $MESOS_TASK_ID\n  cpus: 0.1\n  mem: 32\n"
    )
    added = cluster.cli("job", "add", str(definition))
    assert added.returncode == 0, added.stderr
    ok = cluster.cli("job", "run", "--wait", "hello")
    assert ok.returncode == 0, ok.stderr
    assert "hello from hello_" in ok.stdout

    _post(cluster, "/v1/jobs", _job("broken", "echo bad >&2; exit 3"))
    failing = cluster.cli("job", "run", "--wait", "broken")
    assert failing.returncode == 3 and "bad" in failing.stderr
    history = cluster.get("/v1/jobs/broken", params={"embed": "history"})["history"]
    assert history["failureCount"] == 1 and history["successCount"] == 0
    (failed,) = history["failedFinishedRuns"]
    assert failed["tasks"][0].startswith(f"broken_{failed['id']}.")
    shown = cluster.cli("job", "history", "hello")
    assert "1 successful" in shown.stdout, shown.stdout

    _post(cluster, "/v1/jobs", _job("huge", "true", cpus=64))
    run = _post(cluster, "/v1/jobs/huge/runs")
    queued = wait_for(
        lambda: [q for q in cluster.get("/v1/queue") if q["runs"][0].get("queuedReasons")],
        10,
        "a queue reason",
    )
    assert queued[0]["jobId"] == "huge" and queued[0]["runs"][0]["runId"] == run["id"]
    assert queued[0]["runs"][0]["queuedReasons"] == {"InsufficientCpus": 1}
    assert _run(cluster, "huge", run["id"])["status"] == "STARTING"
    stop = cluster.cli("job", "kill", "huge", run["id"])
    assert stop.returncode == 0, stop.stderr
    _wait_run(cluster, "huge", run["id"], "FAILED")
    listed = cluster.cli("job", "list")
    assert "hello" in listed.stdout and "broken" in listed.stdout

    schedule = tmp_path / "schedule.json"
    schedule.write_text('{"id": "hourly", "cron": "0 * * * *", "timezone": "America/New_York"}')
    added = cluster.cli("job", "schedule", "add", "hello", str(schedule))
    assert added.returncode == 0 and "next run at" in added.stdout, added.stderr
    schedules = cluster.cli("job", "schedule", "list", "hello")
    assert "America/New_York" in schedules.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "bad", "cron": "0 25 * * *"}')
    refused = cluster.cli("job", "schedule", "add", "hello", str(bad))
    assert refused.returncode == 1 and "/cron" in refused.stderr, refused.stderr
    removed = cluster.cli("job", "schedule", "remove", "hello", "hourly")
    assert removed.returncode == 0, removed.stderr


def test_on_failure_retries_until_the_deadline(cluster: Cluster) -> None:
    cluster.start_agent()
    job = _job("flaky", "exit 1", restart={"policy": "ON_FAILURE", "activeDeadlineSeconds": 3})
    _post(cluster, "/v1/jobs", job)
    started = time.monotonic()
    run = _post(cluster, "/v1/jobs/flaky/runs")
    done = _wait_run(cluster, "flaky", run["id"], "SUCCESS", "FAILED", timeout=20)
    assert done["status"] == "FAILED"
    assert len(done["tasks"]) >= 2, "retried at least once"
    assert all(t["status"] == "TASK_FAILED" for t in done["tasks"])
    # No retry starts past the deadline (3 s after the run was created).
    started_at = [t["startedAt"] for t in done["tasks"]]
    assert started_at == sorted(started_at)
    assert time.monotonic() - started < 10


def test_master_killed_mid_run_neither_loses_nor_duplicates(cluster: Cluster) -> None:
    cluster.start_agent()
    _post(cluster, "/v1/jobs", _job("steady", "sleep 3; echo done"))
    run = _post(cluster, "/v1/jobs/steady/runs")
    _wait_run(cluster, "steady", run["id"], "ACTIVE")
    assert cluster.master is not None
    cluster.master.kill9()
    cluster.start_master()
    done = _wait_run(cluster, "steady", run["id"], "SUCCESS", "FAILED", timeout=30)
    assert done["status"] == "SUCCESS"
    assert len(done["tasks"]) == 1
    history = cluster.get("/v1/jobs/steady", params={"embed": "history"})["history"]
    assert history["successCount"] == 1 and history["failureCount"] == 0
    job_tasks = [t for t in cluster.get("/v1/tasks")["tasks"] if t["appId"] == "steady"]
    assert len(job_tasks) == 1


# ---- a master in this process whose jobs controller runs on a fake clock ---------------------


class _ThreadServer(MasterServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serving_files(config: MasterConfig) -> ServingFiles:
    store = open_store(config.store, config.work_dir)
    try:
        return await ensure_serving_cert(config, store, SystemClock())
    finally:
        await store.close()


class InProcessMaster:
    """The real master app on the cluster's port, served from a thread; real agents join
    it. Only its jobs controller reads the fake clock."""

    def __init__(self, cluster: Cluster, clock: FakeClock) -> None:
        self.cluster = cluster
        config = MasterConfig(
            work_dir=cluster.root / "master",
            port=cluster.port,
            agent_port=cluster.agent_port,
            heartbeat_interval=0.5,
        )
        # HTTPS like `tessera master`: the certificate first (it creates the cluster's keys).
        tls = asyncio.run(_serving_files(config))
        cluster.ssl_context.load_verify_locations(cafile=tls.ca)
        self.app = create_app(config)
        self.jobs: JobsController = self.app.state.jobs
        self.jobs.clock = clock
        self.clock = clock
        server_config = uvicorn.Config(
            self.app,
            port=cluster.port,
            log_level="warning",
            ws_ping_interval=None,
            ssl_certfile=tls.cert,
            ssl_keyfile=tls.key,
            timeout_graceful_shutdown=3,
        )
        self.server = _ThreadServer(server_config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessMaster:
        self.thread.start()
        wait_for(self.cluster._pings, 20, "the in-process master")
        work_dir = self.cluster.root / "master"
        wait_for((work_dir / ADMIN_TOKEN).exists, 20, "the superuser's token")
        self.cluster.http.headers.update(auth_headers(work_dir))
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.2)  # no stop while the planner is being woken (see test_jobs_controller)
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the in-process master did not stop"

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        loop_task = self.jobs._loop
        assert loop_task is not None
        loop_task.get_loop().call_soon_threadsafe(self.jobs.wake)


def _aligned_clock() -> FakeClock:
    """Five seconds past a whole minute, near real time (task timestamps are real)."""
    return FakeClock(wall=(time.time() // 60) * 60 + 5)


def _active(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = cluster.get(f"/v1/jobs/{job_id}/runs")
    return runs


def _running(cluster: Cluster, job_id: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (
            len(
                r := [
                    run
                    for run in _active(cluster, job_id)
                    if run["status"] == "ACTIVE"
                    and any(t["status"] == "TASK_RUNNING" for t in run["tasks"])
                ]
            )
            == count
            and r
        ),
        20,
        f"{count} running runs of {job_id}",
    )


@pytest.fixture
def agents_only(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_concurrency_policies_with_a_long_running_job(agents_only: Cluster) -> None:
    cluster = agents_only
    with InProcessMaster(cluster, _aligned_clock()) as master:
        cluster.start_agent(resources="cpus:4;mem:4096;disk:1000;ports:[31000-31010]")
        for policy in ("ALLOW", "FORBID", "REPLACE"):
            job = _job(policy.lower(), "sleep 300", taskKillGracePeriodSeconds=0.5)
            job["schedules"] = [
                {"id": "minutely", "cron": "* * * * *", "concurrencyPolicy": policy}
            ]
            _post(cluster, "/v1/jobs", job)
        master.advance(60)
        first = {p: _running(cluster, p, 1)[0]["id"] for p in ("allow", "forbid", "replace")}
        master.advance(60)

        assert {r["id"] for r in _running(cluster, "allow", 2)} > {first["allow"]}

        time.sleep(0.5)
        assert [r["id"] for r in _active(cluster, "forbid")] == [first["forbid"]]
        forbid = cluster.get("/v1/jobs/forbid", params={"embed": "history"})["history"]
        assert forbid["missedCount"] == 1 and "FORBID" in forbid["missedRuns"][0]["reason"]

        (replacement,) = _running(cluster, "replace", 1)
        assert replacement["id"] != first["replace"]
        replaced = _wait_run(cluster, "replace", first["replace"], "FAILED")
        assert replaced["tasks"][0]["status"] == "TASK_KILLED"
        for job_id in ("allow", "forbid", "replace"):
            cluster.http.delete(f"/v1/jobs/{job_id}", params={"stopCurrentJobRuns": "true"})


def test_master_down_across_a_scheduled_time(agents_only: Cluster) -> None:
    cluster = agents_only
    clock = _aligned_clock()
    with InProcessMaster(cluster, clock):
        cluster.start_agent()
        for job_id, deadline in (("inside", 30), ("outside", 10)):
            job = _job(job_id, "echo ran")
            job["schedules"] = [
                {"id": "minutely", "cron": "* * * * *", "startingDeadlineSeconds": deadline}
            ]
            _post(cluster, "/v1/jobs", job)
    # Stopped at :05; back at :20 of the next minute: that minute's run is 20 s late.
    clock.advance(75)
    with InProcessMaster(cluster, clock):
        wait_for(lambda: _history(cluster, "inside")["successCount"] == 1, 20, "the late run")
        outside = _history(cluster, "outside")
        assert outside["successCount"] == 0 and outside["missedCount"] == 1
        assert _active(cluster, "outside") == []
    # Another restart does not start the handled time again.
    with InProcessMaster(cluster, clock):
        time.sleep(1)
        assert _history(cluster, "inside")["successCount"] == 1
        assert _active(cluster, "inside") == []


def _history(cluster: Cluster, job_id: str) -> dict[str, Any]:
    history: dict[str, Any] = cluster.get(f"/v1/jobs/{job_id}", params={"embed": "history"})[
        "history"
    ]
    return history
