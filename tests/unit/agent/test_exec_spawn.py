"""Building a task's command line and environment (no process is started here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tessera.agent.exec_spawn import (
    RunAs,
    SwitchTools,
    command_line,
    find_executable,
    task_environment,
)
from tessera.agent.exec_types import LaunchFailed, LaunchSpec

NOBODY = RunAs("nobody", 65534, 65534, (65534, 100), "/nonexistent")
TOOLS = SwitchTools("/usr/bin/setpriv", "/usr/bin/env")
PATH = {"PATH": "/usr/bin:/bin"}


def test_command_runs_through_the_shell() -> None:
    spec = LaunchSpec("t", command="echo $HOME")
    assert command_line(spec, NOBODY, PATH, None) == ["/bin/sh", "-c", "echo $HOME"]


def test_switching_user_drops_privileges_before_taking_the_environment() -> None:
    spec = LaunchSpec("t", args=("sleep", "1"))
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/tmp/evil.so"}
    assert command_line(spec, NOBODY, env, TOOLS) == [
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--groups=65534,100",
        "--",
        "/usr/bin/env",
        "-i",
        "--",
        "PATH=/usr/bin:/bin",
        "LD_PRELOAD=/tmp/evil.so",
        "sleep",
        "1",
    ]


def test_no_supplementary_groups_clears_them() -> None:
    lonely = RunAs("x", 1000, 1000, (), "/")
    line = command_line(LaunchSpec("t", command="true"), lonely, PATH, TOOLS)
    assert "--clear-groups" in line


def test_executable_named_like_an_assignment_is_refused_when_switching(tmp_path: Path) -> None:
    odd = tmp_path / "a=b"
    odd.write_text("#!/bin/sh\n")
    odd.chmod(0o755)
    spec = LaunchSpec("t", args=(str(odd),))
    with pytest.raises(LaunchFailed, match="must not contain '='"):
        command_line(spec, NOBODY, PATH, TOOLS)


def test_missing_executable_cannot_launch() -> None:
    spec = LaunchSpec("t", args=("nosuchcmd", "x"))
    with pytest.raises(LaunchFailed, match="No such file or directory: 'nosuchcmd'") as caught:
        command_line(spec, NOBODY, PATH, None)
    assert caught.value.exit.state == "TASK_FAILED"
    assert caught.value.exit.reason == "REASON_CONTAINER_LAUNCH_FAILED"


def test_find_executable(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    assert find_executable("tool", f"/nonexistent:{tmp_path}") is None  # not executable
    tool.chmod(0o755)
    assert find_executable("tool", f"/nonexistent:{tmp_path}") == str(tool)
    assert find_executable(str(tool), None) == str(tool)
    assert find_executable(str(tmp_path / "missing"), None) is None
    assert find_executable("sh", None) is not None  # the default PATH


def test_environment_adds_sandbox_and_identity_only_when_missing(tmp_path: Path) -> None:
    spec = LaunchSpec("t", command="true", env={"PORT0": "31000", "HOME": "/custom"})
    env = task_environment(spec, NOBODY, str(tmp_path))
    assert env == {
        "PORT0": "31000",
        "HOME": "/custom",
        "MESOS_SANDBOX": str(tmp_path),
        "USER": "nobody",
        "LOGNAME": "nobody",
    }
    # nobody's home does not exist: the sandbox stands in for it.
    bare = task_environment(LaunchSpec("t", command="true"), NOBODY, str(tmp_path))
    assert bare["HOME"] == str(tmp_path)
    me = RunAs("me", os.getuid(), os.getgid(), (), str(tmp_path.parent))
    assert task_environment(LaunchSpec("t", command="true"), me, "/s")["HOME"] == me.home


@pytest.mark.parametrize("task_id", ["", "a/b", "..", "x y", "a" * 201])
def test_task_ids_must_be_one_safe_path_component(task_id: str) -> None:
    with pytest.raises(ValueError):
        LaunchSpec(task_id, command="true")


def test_spec_needs_exactly_one_of_command_and_args() -> None:
    with pytest.raises(ValueError):
        LaunchSpec("t")
    with pytest.raises(ValueError):
        LaunchSpec("t", command="true", args=("true",))
    with pytest.raises(ValueError):
        LaunchSpec("t", args=())
