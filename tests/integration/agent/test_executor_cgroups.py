"""Tasks in real cgroups: limits, OOM, kill of a whole tree, usage, cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from conftest import eventually, process_gone
from tessera.agent.executor import Executor, LaunchSpec

PYTHON = "/usr/bin/python3"
MIB = 1024 * 1024


def procs(cgroup: str) -> list[int]:
    try:
        return [int(pid) for pid in Path(cgroup, "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def read(cgroup: str, name: str) -> str:
    return Path(cgroup, name).read_text().strip()


def find(paths: tuple[str, ...], control_file: str) -> str:
    return next(path for path in paths if os.path.exists(f"{path}/{control_file}"))


async def test_cgroup_carries_the_limits(cg_executor: Executor) -> None:
    spec = LaunchSpec("limits.1", args=("sleep", "30"), cpus=0.5, mem=64, pids_limit=50)
    running = await cg_executor.launch(spec)
    version = cg_executor.isolation_info()["cgroups"]
    if version == "v1":
        assert read(find(running.cgroups, "cpu.shares"), "cpu.shares") == "512"
        memory = find(running.cgroups, "memory.limit_in_bytes")
        assert read(memory, "memory.limit_in_bytes") == str(64 * MIB)
        assert read(find(running.cgroups, "cpu.cfs_quota_us"), "cpu.cfs_quota_us") == "-1"
    else:
        assert read(running.cgroups[0], "cpu.weight") == "20"
        assert read(running.cgroups[0], "memory.max") == str(64 * MIB)
    assert read(find(running.cgroups, "pids.max"), "pids.max") == "50"
    # The wrapper joined every cgroup of the task before starting the command.
    await eventually(lambda: all(running.pid in procs(path) for path in running.cgroups))


async def test_hard_cpu_limit_sets_the_quota(cg_executor: Executor) -> None:
    spec = LaunchSpec("quota.1", args=("sleep", "30"), cpus=0.25, cpu_hard_limit=True)
    running = await cg_executor.launch(spec)
    if cg_executor.isolation_info()["cgroups"] == "v1":
        assert read(find(running.cgroups, "cpu.cfs_quota_us"), "cpu.cfs_quota_us") == "25000"
    else:
        assert read(running.cgroups[0], "cpu.max") == "25000 100000"


async def test_command_runs_inside_its_cgroup(cg_executor: Executor) -> None:
    await cg_executor.launch(LaunchSpec("inside.1", command="cat /proc/self/cgroup"))
    assert (await cg_executor.wait("inside.1")).state == "TASK_FINISHED"
    membership = (cg_executor.sandbox("inside.1") / "stdout").read_text()
    assert "/inside.1" in membership


async def test_memory_hog_fails_with_the_memory_reason(cg_executor: Executor) -> None:
    hog = "data = b'x' * (200 * 1024 * 1024)"
    await cg_executor.launch(LaunchSpec("hog.1", args=(PYTHON, "-c", hog), mem=64))
    result = await cg_executor.wait("hog.1")
    assert result.state == "TASK_FAILED"
    assert result.reason == "REASON_CONTAINER_LIMITATION_MEMORY"
    assert "64 MiB" in result.message


async def test_kill_leaves_nothing_of_a_tree_that_ignores_sigterm(cg_executor: Executor) -> None:
    # Children ignore SIGTERM; one leaves the session (escapes its process group, not its cgroup).
    tree = "trap '' TERM; sleep 300 & sleep 300 & setsid sleep 300 & wait"
    running = await cg_executor.launch(LaunchSpec("tree.1", command=tree))
    await eventually(lambda: len(procs(running.cgroups[0])) >= 5)
    members = procs(running.cgroups[0])
    await cg_executor.kill("tree.1", grace=0.3)
    result = await cg_executor.wait("tree.1")
    assert result.state == "TASK_KILLED"
    assert all(process_gone(pid) for pid in members)
    assert not any(os.path.exists(path) for path in running.cgroups)  # cleaned up
    assert "tree.1" not in cg_executor.running()


async def test_graceful_task_ends_on_sigterm_within_the_grace(cg_executor: Executor) -> None:
    running = await cg_executor.launch(LaunchSpec("grace.1", args=("sleep", "300")))
    wrapper = psutil.Process(running.pid)
    # Until sleep has exec'd, a SIGTERM may land in the wrapper's fork and be lost.
    await eventually(lambda: [child.name() for child in wrapper.children()] == ["sleep"])
    await cg_executor.kill("grace.1", grace=30)  # returns as soon as sleep dies of SIGTERM
    result = await cg_executor.wait("grace.1")
    assert (result.state, result.signal) == ("TASK_KILLED", 15)


async def test_kill_right_after_launch(cg_executor: Executor) -> None:
    # The wrapper may not have joined its cgroup yet: its process group is signalled too.
    running = await cg_executor.launch(LaunchSpec("early.1", args=("sleep", "300")))
    await cg_executor.kill("early.1", grace=0)
    assert (await cg_executor.wait("early.1")).state == "TASK_KILLED"
    assert process_gone(running.pid)


async def test_leftover_processes_die_with_the_task(cg_executor: Executor) -> None:
    # The command exits at once, leaving a daemonised grandchild behind in its cgroup.
    running = await cg_executor.launch(LaunchSpec("leftover.1", command="setsid sleep 300 &"))
    result = await cg_executor.wait("leftover.1")
    assert result.state == "TASK_FINISHED"
    assert not any(os.path.exists(path) for path in running.cgroups)


async def test_usage_numbers_are_sane(cg_executor: Executor) -> None:
    work = (
        "import time\n"
        "data = b'x' * (30 * 1024 * 1024)\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    await cg_executor.launch(LaunchSpec("usage.1", args=(PYTHON, "-c", work), mem=128))
    stdout = cg_executor.sandbox("usage.1") / "stdout"
    await eventually(lambda: "ready" in stdout.read_text())
    usage = cg_executor.usage("usage.1")
    assert usage.source == "cgroup"
    assert usage.cpu_seconds >= 0.25
    assert 30 * MIB <= usage.mem_bytes <= 128 * MIB
    assert usage.mem_limit_bytes == 128 * MIB
    assert usage.pids == 2  # the wrapper and python
