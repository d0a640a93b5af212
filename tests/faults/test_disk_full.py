"""Fault 9: the disk under the agent's work dir fills up (a small tmpfs, filled by the test).

Tasks that cannot start fail with a reason naming the full disk; running tasks keep running;
the status journal and the task checkpoints stay readable through a `kill -9` of the agent;
once space returns, tasks start again. Needs root (mount); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tessera.agent.journal import NotDurable, StatusJournal
from tessera.model.protocol import StatusUpdate
from tessera.model.task import TaskState
from tessera.testing.cluster import Cluster, task_processes, wait_for

RESOURCES = "cpus:4;mem:4096;disk:100;ports:[31000-31099]"
FETCHED = "/etc/services"  # readable by the task user, and more than a full disk can take


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """`path` as a fresh tmpfs of `size`; skips the test when one cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (disk-full faults)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        kill_processes_inside(path)  # tasks a failed test left behind keep it busy
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def kill_processes_inside(path: Path) -> None:
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if Path(process.cwd()).is_relative_to(path):
                process.kill()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has not one block left (again); returns the file."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * chunk)
    finally:
        os.close(descriptor)
    assert os.statvfs(directory).f_bfree == 0
    return filler


def pids(task_ids: list[str]) -> dict[str, frozenset[int]]:
    """The top process(es) of each task (not the short-lived children a loop forks)."""
    found = {}
    for task_id in task_ids:
        processes = task_processes(task_id)
        inside = {process.pid for process in processes}
        found[task_id] = frozenset(p.pid for p in processes if p.ppid() not in inside)
    return found


def agent_url(cluster: Cluster, other_than: str | None = None) -> str | None:
    agents = cluster.get("/v1/agents")["agents"]
    if agents and agents[0]["state"] == "ACTIVE" and agents[0]["url"] != other_than:
        return str(agents[0]["url"])
    return None


def assert_readable(work_dir: Path) -> None:
    """Every journal line and every task checkpoint parses: nothing was torn."""
    journal = (work_dir / "journal" / "status-updates.jsonl").read_bytes()
    assert journal.endswith(b"\n")
    for line in journal.splitlines():
        json.loads(line)
    for task_dir in (work_dir / "meta" / "tasks").iterdir():
        for name in ("task.json", "exit.json"):
            if (task_dir / name).exists():
                json.loads((task_dir / name).read_text())


def assert_failed_for_space(cluster: Cluster, task_id: str) -> None:
    ended = cluster.wait_state(task_id, "TASK_FAILED", "TASK_RUNNING", "TASK_FINISHED")
    assert ended["state"] == "TASK_FAILED", ended
    assert ended["reason"] == "REASON_CONTAINER_LAUNCH_FAILED", ended
    assert "the agent's disk is full (No space left on device" in ended["message"], ended


def test_full_disk_fails_new_tasks_keeps_running_ones_and_recovers(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cue = Path(tempfile.mkdtemp(prefix="tessera-cue-"))  # the task user can see in it
    cue.chmod(0o755)
    with small_tmpfs(tmp_path / "agent-1", "8m") as work_dir:
        try:
            cluster.start_master()
            agent = cluster.start_agent(resources=RESOURCES)
            running = [
                cluster.launch(name="sleeper", cmd="sleep 600", cpus=0.05, mem=16)["id"],
                # Keeps writing to its stdout, on the disk that fills: it must not die of it.
                cluster.launch(
                    name="chatty", cmd="while true; do echo tick; sleep 0.1; done", mem=16
                )["id"],
            ]
            # Ends on cue while the agent is down and the disk full: its exit status must
            # still be recorded (TASK_FINISHED, not "ended without recording an exit status").
            on_cue = cluster.launch(
                name="oncue", cmd=f"while [ ! -e {cue}/go ]; do sleep 0.05; done", mem=16
            )["id"]
            for task_id in [*running, on_cue]:
                cluster.wait_state(task_id, "TASK_RUNNING")
            before = wait_for(lambda: all((p := pids(running)).values()) and p, 10, "task pids")

            filler = fill(work_dir)
            plain = cluster.launch(name="late", cmd="sleep 600", mem=16)["id"]
            fetching = cluster.launch(
                name="fetching", cmd="sleep 600", mem=16, fetch=[{"uri": f"file://{FETCHED}"}]
            )["id"]
            assert_failed_for_space(cluster, plain)
            assert_failed_for_space(cluster, fetching)
            assert pids(running) == before, "a running task died of the full disk"

            # kill -9 while the disk is full: the journal and the checkpoints read back, and
            # the restarted agent re-adopts the running tasks, same processes.
            url = agent_url(cluster)
            agent.kill9()
            assert_readable(work_dir)
            (cue / "go").touch()
            wait_for(lambda: not task_processes(on_cue), 10, "the cued task to end")
            agent.start()
            url = wait_for(lambda: agent_url(cluster, url), 20, "the agent to re-register")
            adopted = {
                task_id: cluster.sandbox(task_id).get("/v1/info").json()["tasks"]
                for task_id in running
            }
            assert adopted == {task_id: {task_id: "TASK_RUNNING"} for task_id in running}
            assert pids(running) == before, "a task was restarted across the agent crash"
            finished = cluster.wait_state(on_cue, "TASK_FINISHED", "TASK_FAILED")
            assert (finished["state"], finished["exitCode"]) == ("TASK_FINISHED", 0), finished
            # Its end acknowledged, the cued task's checkpoint goes, and with it some space.
            wait_for(lambda: not (work_dir / "meta" / "tasks" / on_cue).exists(), 10, "forget")
            fill(work_dir)
            assert_failed_for_space(cluster, cluster.launch(cmd="sleep 600", mem=16)["id"])

            filler.unlink()  # space returns: tasks start again, fetches too
            again = [
                cluster.launch(name="again", cmd="sleep 600", mem=16)["id"],
                cluster.launch(
                    name="fetched",
                    cmd="test -s services && sleep 600",
                    mem=16,
                    fetch=[{"uri": f"file://{FETCHED}"}],
                )["id"],
            ]
            for task_id in again:
                cluster.wait_state(task_id, "TASK_RUNNING")
            assert pids(running) == before
            assert agent.process is not None and agent.process.poll() is None
            assert_readable(work_dir)
        finally:
            cluster.stop()
            shutil.rmtree(cue, ignore_errors=True)


def test_no_inodes_left_fails_new_tasks_too(tmp_path: Path) -> None:
    """Out of inodes rather than blocks (every mkdir fails): same clear failure, same recovery."""
    cluster = Cluster(tmp_path)
    with small_tmpfs(tmp_path / "agent-1", "8m,nr_inodes=200") as work_dir:
        try:
            cluster.start_master()
            cluster.start_agent(resources=RESOURCES)
            sleeper = cluster.launch(cmd="sleep 600", mem=16)["id"]
            cluster.wait_state(sleeper, "TASK_RUNNING")
            fillers = work_dir / "inodes"
            fillers.mkdir()
            with contextlib.suppress(OSError):
                for index in range(1000):
                    (fillers / str(index)).touch()
            assert os.statvfs(work_dir).f_ffree == 0
            plain = cluster.launch(cmd="sleep 600", mem=16)["id"]
            fetching = cluster.launch(cmd="true", mem=16, fetch=[{"uri": f"file://{FETCHED}"}])
            assert_failed_for_space(cluster, plain)
            assert_failed_for_space(cluster, fetching["id"])
            assert cluster.task(sleeper)["state"] == "TASK_RUNNING"
            shutil.rmtree(fillers)
            cluster.wait_state(cluster.launch(cmd="sleep 600", mem=16)["id"], "TASK_RUNNING")
            assert_readable(work_dir)
        finally:
            cluster.stop()


def test_updates_the_full_disk_cannot_journal_are_sent_logged_and_journaled_later(
    tmp_path: Path,
) -> None:
    """The journal alone on a tmpfs too small for its reserve: an update it cannot write is
    not durable. It still reaches the master (its ack is then the only durable record), the
    agent says so in its log, nothing torn is left in the journal, and the next update is
    journaled once space returns."""
    cluster = Cluster(tmp_path)
    with small_tmpfs(tmp_path / "agent-1" / "journal", "64k") as journal_dir:
        try:
            cluster.start_master()
            agent = cluster.start_agent(resources=RESOURCES)
            filler = fill(journal_dir)
            before = (journal_dir / "status-updates.jsonl").read_bytes()
            task = cluster.launch(cmd="sleep 600", mem=16)["id"]
            cluster.wait_state(task, "TASK_RUNNING")
            wait_for(lambda: "are NOT durable" in agent.log(), 10, "the not-durable log line")
            assert "the agent's disk is full (No space left on device" in agent.log()
            journal = (journal_dir / "status-updates.jsonl").read_bytes()
            assert journal == before, "a failed write left part of an update behind"

            # kill -9 with the disk still full: the journal replays, the task is re-adopted.
            pid = wait_for(lambda: (found := pids([task]))[task] and found, 10, "the task's pid")
            url = agent_url(cluster)
            agent.kill9()
            agent.start()
            url = wait_for(lambda: agent_url(cluster, url), 20, "the agent to re-register")
            info = cluster.sandbox(task).get("/v1/info").json()
            assert info["tasks"] == {task: "TASK_RUNNING"}
            assert pids([task]) == pid
            assert (journal_dir / "status-updates.jsonl").read_bytes() == before

            filler.unlink()
            cluster.http.delete(f"/v1/tasks/{task}").raise_for_status()
            cluster.wait_state(task, "TASK_KILLED")
            # TASK_RUNNING was acknowledged while held back: it is never written. The end is.
            lines = (journal_dir / "status-updates.jsonl").read_text().splitlines()
            updates = [entry for entry in map(json.loads, lines) if "ack" not in entry]
            assert [entry["state"] for entry in updates] == ["TASK_KILLED"]
        finally:
            cluster.stop()


async def test_journal_on_a_full_tmpfs_raises_not_durable_then_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "journal", "64k") as directory:
        caplog.set_level(logging.WARNING)
        journal = StatusJournal(directory)
        assert "cannot reserve space" in caplog.text
        filler = fill(directory)
        update = StatusUpdate("u1", "t.1", TaskState.TASK_RUNNING, 1.0)
        with pytest.raises(NotDurable, match="No space left on device"):
            await journal.record(update)
        assert journal.path.read_bytes() == b""
        assert [u.uuid for u in journal.pending()] == ["u1"]
        filler.unlink()
        await journal.record(StatusUpdate("u2", "t.1", TaskState.TASK_FINISHED, 2.0))
        await asyncio.to_thread(journal.close)
        reopened = StatusJournal(directory)
        assert [u.uuid for u in reopened.pending()] == ["u1", "u2"]
        reopened.close()
