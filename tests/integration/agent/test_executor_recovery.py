"""Agent restarts: a new Executor re-adopts live tasks and learns how the others ended."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import eventually, process_gone
from tessera.agent.executor import Executor, LaunchSpec

PYTHON = "/usr/bin/python3"

AGENT = """
import asyncio, json, sys
from pathlib import Path
from tessera.agent.executor import Executor, LaunchSpec

HOG = "b = b'x' * 200000000"


async def main():
    executor = Executor(Path(sys.argv[1]), cgroup_prefix=sys.argv[2], isolation=sys.argv[3])
    pids = {}
    for spec in (
        LaunchSpec("long.1", args=("sleep", "300")),
        LaunchSpec("short.1", command="sleep 0.3; exit 7"),
        LaunchSpec("hog.1", command="sleep 0.3; exec python3 -c " + repr(HOG), mem=64),
    ):
        pids[spec.task_id] = (await executor.launch(spec)).pid
    print(json.dumps(pids), flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def checkpoint_file(work_dir: Path, task_id: str) -> Path:
    return work_dir / "meta" / "tasks" / task_id / "task.json"


def edit_checkpoint(work_dir: Path, task_id: str, **changes: object) -> None:
    path = checkpoint_file(work_dir, task_id)
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("isolation", ["cgroups", "none"])
async def test_restart_after_close_recovers_live_and_ended_tasks(
    isolation: str, make_executor: Callable[..., Executor]
) -> None:
    first = make_executor(isolation)
    long = await first.launch(LaunchSpec("long.1", args=("sleep", "300")))
    short = await first.launch(LaunchSpec("short.1", command="sleep 0.2; exit 7"))
    await first.close()  # the agent goes away without killing anything
    await eventually(lambda: process_gone(short.pid))

    second = make_executor(isolation)
    recovered = {task.task_id: task for task in await second.recover()}
    assert recovered["long.1"].alive and recovered["long.1"].pid == long.pid
    assert not recovered["short.1"].alive
    ended = recovered["short.1"].exit
    assert ended is not None and (ended.state, ended.exit_code) == ("TASK_FAILED", 7)
    assert await second.wait("short.1") == ended
    assert second.running() == ["long.1"]
    assert second.usage("long.1").pids >= 1

    await second.kill("long.1", grace=1)
    assert (await second.wait("long.1")).state == "TASK_KILLED"
    assert process_gone(long.pid)
    again = await second.recover()  # recovering twice changes nothing
    assert sorted(task.task_id for task in again) == ["long.1", "short.1"]
    assert not any(task.alive for task in again)


@pytest.mark.parametrize("isolation", ["cgroups", "none"])
async def test_agent_killed_hard_then_restarted(
    isolation: str, make_executor: Callable[..., Executor], work_dir: Path, cgroup_prefix: str
) -> None:
    make_executor(isolation)  # skips here when cgroups are not writable
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(work_dir), cgroup_prefix, isolation],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        pids = json.loads(await asyncio.to_thread(agent.stdout.readline))
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert not process_gone(pids["long.1"])  # tasks do not die with their agent
    await eventually(lambda: process_gone(pids["short.1"]) and process_gone(pids["hog.1"]))

    restarted = make_executor(isolation)
    recovered = {task.task_id: task for task in await restarted.recover()}
    assert recovered["long.1"].alive and recovered["long.1"].pid == pids["long.1"]
    short = await restarted.wait("short.1")
    assert (short.state, short.exit_code) == ("TASK_FAILED", 7)
    hog = await restarted.wait("hog.1")
    if isolation == "cgroups":
        assert hog.reason == "REASON_CONTAINER_LIMITATION_MEMORY"
    else:
        assert hog.state == "TASK_FINISHED"  # no limit without cgroups
    await restarted.kill("long.1", grace=0.5)
    assert (await restarted.wait("long.1")).state == "TASK_KILLED"


async def test_reused_pid_is_not_adopted(
    make_executor: Callable[..., Executor], work_dir: Path
) -> None:
    first = make_executor("cgroups")
    running = await first.launch(LaunchSpec("reuse.1", args=("sleep", "300")))
    await first.close()
    # Pretend the checkpointed process started at another time: the pid now names a stranger.
    edit_checkpoint(work_dir, "reuse.1", start_ticks=1)

    second = make_executor("cgroups")
    [recovered] = await second.recover()
    assert not recovered.alive
    assert recovered.exit is not None and recovered.exit.reason == "REASON_EXECUTOR_TERMINATED"
    assert "reuse.1" not in second.running()
    # What was still in the task's cgroup is ours all the same, and was cleaned up.
    await eventually(lambda: process_gone(running.pid))


async def test_host_reboot_means_lost(
    make_executor: Callable[..., Executor], work_dir: Path
) -> None:
    first = make_executor("none")
    running = await first.launch(LaunchSpec("boot.1", args=("sleep", "300")))
    await first.close()
    os.killpg(running.pid, signal.SIGKILL)
    os.waitpid(running.pid, 0)
    edit_checkpoint(work_dir, "boot.1", boot_id="an-earlier-boot")

    second = make_executor("none")
    [recovered] = await second.recover()
    assert recovered.exit is not None
    assert (recovered.exit.state, recovered.exit.reason) == ("TASK_LOST", "REASON_AGENT_RESTARTED")
    assert (await second.wait("boot.1")).state == "TASK_LOST"


async def test_kill_started_before_the_restart_reports_killed(
    make_executor: Callable[..., Executor], work_dir: Path
) -> None:
    first = make_executor("none")
    running = await first.launch(LaunchSpec("halfkill.1", args=("sleep", "300")))
    wrapper = psutil.Process(running.pid)
    # Until sleep has exec'd, a SIGTERM may land in the wrapper's fork and be lost.
    await eventually(lambda: [child.name() for child in wrapper.children()] == ["sleep"])
    await first.close()
    (work_dir / "meta" / "tasks" / "halfkill.1" / "kill_requested").touch()
    os.killpg(running.pid, signal.SIGTERM)
    await eventually(lambda: process_gone(running.pid))

    second = make_executor("none")
    await second.recover()
    assert (await second.wait("halfkill.1")).state == "TASK_KILLED"


async def test_orphan_cgroups_are_killed_on_recovery(
    make_executor: Callable[..., Executor], work_dir: Path
) -> None:
    first = make_executor("cgroups")
    running = await first.launch(LaunchSpec("orphan.1", args=("sleep", "300")))
    await first.close()
    # The agent died between starting the task and checkpointing it.
    checkpoint_file(work_dir, "orphan.1").unlink()

    second = make_executor("cgroups")
    assert await second.recover() == []
    await eventually(lambda: process_gone(running.pid))
    assert not any(os.path.exists(path) for path in running.cgroups)
