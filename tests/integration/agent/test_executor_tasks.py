"""Task lifecycle on real processes, with cgroups and with process groups only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from conftest import eventually, needs_root, process_gone
from tessera.agent.exec_spawn import mount_namespaces
from tessera.agent.executor import Executor, LaunchFailed, LaunchSpec, UnknownTask

ENV = {"PATH": "/usr/bin:/bin", "MESOS_TASK_ID": "t", "PORT0": "31000", "HOST": "h1"}


@pytest.fixture(params=["cgroups", "none"])
async def executor(
    request: pytest.FixtureRequest, make_executor: Callable[..., Executor]
) -> AsyncIterator[Executor]:
    made = make_executor(request.param)
    yield made
    for task_id in made.running():
        await made.kill(task_id, 0)
    await made.close()


async def test_exit_codes_map_to_states(executor: Executor) -> None:
    await executor.launch(LaunchSpec("ok.1", command="exit 0", env=ENV))
    await executor.launch(LaunchSpec("bad.1", command="exit 3", env=ENV))
    finished, failed = await executor.wait("ok.1"), await executor.wait("bad.1")
    assert (finished.state, finished.exit_code) == ("TASK_FINISHED", 0)
    assert (failed.state, failed.reason) == ("TASK_FAILED", "REASON_COMMAND_EXECUTOR_FAILED")
    assert failed.message == "Command exited with status 3"
    assert failed.exit_code == 3
    assert executor.running() == []


async def test_output_lands_in_the_sandbox(executor: Executor) -> None:
    command = "echo out; echo err >&2; pwd"
    running = await executor.launch(LaunchSpec("logs.1", command=command, env=ENV))
    await executor.wait("logs.1")
    sandbox = executor.sandbox("logs.1")
    assert running.sandbox == sandbox
    assert (sandbox / "stdout").read_text() == f"out\n{sandbox}\n"
    assert (sandbox / "stderr").read_text() == "err\n"


async def test_environment_is_passed(executor: Executor) -> None:
    command = 'echo "$MESOS_TASK_ID $PORT0 $HOST $MESOS_SANDBOX"'
    await executor.launch(LaunchSpec("env.1", command=command, env=ENV))
    await executor.wait("env.1")
    sandbox = executor.sandbox("env.1")
    assert (sandbox / "stdout").read_text() == f"t 31000 h1 {sandbox}\n"


async def test_missing_executable_cannot_start(executor: Executor) -> None:
    with pytest.raises(LaunchFailed, match="No such file or directory: 'nosuchcmd'") as caught:
        await executor.launch(LaunchSpec("missing.1", args=("nosuchcmd",), env=ENV))
    assert caught.value.exit.state == "TASK_FAILED"
    assert await executor.wait("missing.1") == caught.value.exit
    assert executor.running() == []


async def test_missing_shell_command_fails_with_the_shell_error(executor: Executor) -> None:
    await executor.launch(LaunchSpec("missing.2", command="nosuchcmd", env=ENV))
    result = await executor.wait("missing.2")
    assert (result.state, result.exit_code) == ("TASK_FAILED", 127)
    assert "nosuchcmd: not found" in result.message


async def test_unknown_user_cannot_start(executor: Executor) -> None:
    needs_root()
    with pytest.raises(LaunchFailed, match="unknown user 'no-such-user-x'"):
        await executor.launch(LaunchSpec("user.0", command="true", user="no-such-user-x"))


async def test_tasks_run_as_their_roles_uid_by_default(executor: Executor) -> None:
    needs_root()
    await executor.launch(LaunchSpec("user.1", command="id -u; id -g; touch mine", env=ENV))
    assert (await executor.wait("user.1")).state == "TASK_FINISHED"
    uid = int(str(executor.isolation_info()["default_user"]))  # the role "*"'s own uid
    assert uid not in (0, 65534)
    sandbox = executor.sandbox("user.1")
    assert (sandbox / "stdout").read_text() == f"{uid}\n{uid}\n"
    assert sandbox.stat().st_uid == uid
    assert (sandbox / "stdout").stat().st_uid == uid
    assert (sandbox / "mine").stat().st_uid == uid


async def test_task_environment_never_reaches_the_root_wrapper(executor: Executor) -> None:
    needs_root()
    # LD_PRELOAD in the root wrapper's environment would run the task's code as root.
    env = {**ENV, "LD_PRELOAD": "/nonexistent/evil.so", "SECRET_OF_TASK": "x"}
    running = await executor.launch(LaunchSpec("preload.1", args=("sleep", "30"), env=env))
    wrapper = psutil.Process(running.pid)
    # Wait for the exec, not the fork: between the two the child still has the wrapper's
    # environment.
    await eventually(lambda: [c.name() for c in wrapper.children()] == ["sleep"])
    assert "LD_PRELOAD" not in wrapper.environ()
    assert "SECRET_OF_TASK" not in wrapper.environ()
    [task] = wrapper.children()
    assert task.environ()["SECRET_OF_TASK"] == "x"
    assert task.uids().real == int(str(executor.isolation_info()["default_user"]))


async def test_run_as_a_named_user(executor: Executor) -> None:
    needs_root()
    await executor.launch(LaunchSpec("user.2", command="id -un", env=ENV, user="daemon"))
    await executor.wait("user.2")
    assert (executor.sandbox("user.2") / "stdout").read_text() == "daemon\n"


async def test_kill_ends_the_task(executor: Executor) -> None:
    tree = "trap '' TERM; sleep 300 & sleep 300; wait"
    running = await executor.launch(LaunchSpec("kill.1", command=tree, env=ENV))
    wrapper = psutil.Process(running.pid)
    await eventually(lambda: len(wrapper.children(recursive=True)) >= 3)
    members = [process.pid for process in wrapper.children(recursive=True)]
    await executor.kill("kill.1", grace=0.2)
    assert (await executor.wait("kill.1")).state == "TASK_KILLED"
    assert all(process_gone(pid) for pid in [running.pid, *members])
    await executor.kill("kill.1")  # killing an ended task is a no-op


async def test_launch_is_idempotent_and_ids_are_single_use(executor: Executor) -> None:
    spec = LaunchSpec("once.1", args=("sleep", "30"), env=ENV)
    first = await executor.launch(spec)
    assert await executor.launch(spec) == first
    await executor.kill("once.1", 0)
    with pytest.raises(LaunchFailed, match="already launched"):
        await executor.launch(spec)


async def test_unknown_task(executor: Executor) -> None:
    with pytest.raises(UnknownTask):
        await executor.wait("never.1")
    with pytest.raises(UnknownTask):
        await executor.kill("never.1")
    with pytest.raises(UnknownTask):
        executor.usage("never.1")


async def test_usage_is_reported(executor: Executor) -> None:
    running = await executor.launch(LaunchSpec("usage.2", args=("sleep", "30"), env=ENV))
    # Not just any child: the task may first set up its mount namespace (exec_spawn).
    await eventually(
        lambda: [c.name() for c in psutil.Process(running.pid).children()] == ["sleep"]
    )
    usage = executor.usage("usage.2")
    assert usage.pids == 2
    assert usage.mem_bytes > 0
    assert usage.source == ("cgroup" if executor.isolation_info()["cgroups"] else "procfs")


async def test_isolation_info_says_what_is_missing(executor: Executor) -> None:
    info = executor.isolation_info()
    if info["cgroups"] is None:
        assert "NO CGROUP ISOLATION" in str(info["warning"])
    else:
        assert info["cgroups"] in ("v1", "v2")
    if os.geteuid() == 0:
        assert info["user_switching"] is True


async def test_task_survives_close(executor: Executor, work_dir: Path) -> None:
    running = await executor.launch(LaunchSpec("survive.1", args=("sleep", "30"), env=ENV))
    await executor.close()
    assert not process_gone(running.pid)
    os.killpg(running.pid, 9)  # the fixture's executor no longer knows the task
    os.waitpid(running.pid, 0)


async def test_relative_work_dir(work_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work_dir.parent)
    executor = Executor(Path(work_dir.name), isolation="none")
    await executor.launch(LaunchSpec("relative.1", command="exit 4", env=ENV))
    assert (await executor.wait("relative.1")).exit_code == 4
    await executor.close()


async def test_a_private_work_dir_is_reachable_or_reported(work_dir: Path) -> None:
    needs_root()
    work_dir.chmod(0o700)
    executor = Executor(work_dir, isolation="none")
    # Tasks reach their sandbox through a mount namespace (exec_spawn), else it is reported.
    unreachable = "not reachable by other users" in str(executor.isolation_info()["warning"])
    assert unreachable == (mount_namespaces() is None)
    await executor.close()


async def test_close_removes_an_empty_cgroup_prefix(
    make_executor: Callable[..., Executor], cgroup_prefix: str
) -> None:
    executor = make_executor("cgroups")
    running = await executor.launch(LaunchSpec("prefix.1", command="exit 0", env=ENV))
    await executor.wait("prefix.1")
    await executor.close()
    parents = {os.path.dirname(path) for path in running.cgroups}
    assert parents and not any(os.path.exists(parent) for parent in parents)
    assert all(parent.endswith(cgroup_prefix) for parent in parents)


async def test_exit_code_survives_an_unwritable_status_file(
    executor: Executor, work_dir: Path
) -> None:
    await executor.launch(LaunchSpec("nostatus.1", command="sleep 0.3; exit 5", env=ENV))
    # A directory where the status file goes makes the wrapper's write fail (like a full disk
    # on a filesystem where its space cannot be reserved).
    status = work_dir / "meta" / "tasks" / "nostatus.1" / "exit_status"
    status.unlink()
    status.mkdir()
    result = await executor.wait("nostatus.1")
    assert (result.state, result.exit_code) == ("TASK_FAILED", 5)
