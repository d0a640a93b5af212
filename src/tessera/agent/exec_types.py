"""Value types of the task executor: what to launch, how a task ended, what it uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.agent.containers.runtime import ContainerLaunch

DEFAULT_PIDS_LIMIT = 4096

# Mesos TaskStatus.Reason names used by the executor.
REASON_COMMAND_EXECUTOR_FAILED = "REASON_COMMAND_EXECUTOR_FAILED"
REASON_CONTAINER_LIMITATION_MEMORY = "REASON_CONTAINER_LIMITATION_MEMORY"
REASON_CONTAINER_LAUNCH_FAILED = "REASON_CONTAINER_LAUNCH_FAILED"
REASON_EXECUTOR_TERMINATED = "REASON_EXECUTOR_TERMINATED"
REASON_AGENT_RESTARTED = "REASON_AGENT_RESTARTED"

_TASK_ID = re.compile(r"[A-Za-z0-9_.:@+-]{1,200}")


def check_task_id(task_id: str) -> str:
    """Task IDs name directories and cgroups, so they must be one safe path component."""
    if not _TASK_ID.fullmatch(task_id) or task_id in (".", ".."):
        raise ValueError(f"invalid task id {task_id!r}: use letters, digits and _.:@+-")
    return task_id


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One task to run. Exactly one of `command` (run by `/bin/sh -c`) and `args` (exec'd).

    `env` is the full task environment; the executor only adds `MESOS_SANDBOX` and, when
    absent, `HOME`, `USER` and `LOGNAME` of the run-as user. `mem` and `disk` are MiB;
    `disk` is recorded, not enforced. `user=None` runs as the executor's default user, or
    by default as the uid of the task's `role` on this agent (see `task_users`).
    With `container`, the task runs in a container of that (pulled) image: then neither
    `command` nor `args` may be given (the image's entrypoint and cmd run), and `user` is
    the user inside the container (default: the image's).
    """

    task_id: str
    command: str | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: float = 0.1
    mem: float = 32.0
    disk: float = 0.0
    cpu_hard_limit: bool = False
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    user: str | None = None
    role: str = "*"
    kill_grace_seconds: float = 3.0
    container: ContainerLaunch | None = None

    def __post_init__(self) -> None:
        check_task_id(self.task_id)
        if self.command is not None and self.args is not None:
            raise ValueError("a task takes command or args, not both")
        if self.container is None and self.command is None and self.args is None:
            raise ValueError("a task needs exactly one of command and args")
        if self.args is not None and not self.args:
            raise ValueError("args must not be empty")
        if self.cpus <= 0 or self.mem <= 0:
            raise ValueError("cpus and mem must be positive")


@dataclass(frozen=True, slots=True)
class TaskExit:
    """How a task ended. `state` is a Mesos terminal state name, `reason` a Mesos reason name.

    `exit_code` is set when the command exited; `signal` when a signal ended it (as seen by
    the shell: a status above 128 is read as 128 + signal number).
    """

    state: str
    reason: str | None
    message: str
    exit_code: int | None = None
    signal: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskExit:
        return cls(
            state=str(data["state"]),
            reason=data.get("reason"),
            message=str(data.get("message", "")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
        )


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A launched task. `pid` is the task's wrapper (its executor), session leader of the tree."""

    task_id: str
    pid: int
    sandbox: Path
    cgroups: tuple[str, ...]
    started_at: float
    user: str
    ip: str | None = None  # a bridged container's own address
    exec_prefix: tuple[str, ...] = ()  # runs a command inside the container
    # False for a container that ended before runc could start it (it never ran).
    started: bool = True


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """Resource use of a running task; `source` is "cgroup" or "procfs" (no cgroups here)."""

    cpu_seconds: float
    mem_bytes: int
    mem_limit_bytes: int | None
    pids: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RecoveredTask:
    """A task found in the checkpoint after an agent restart.

    `alive` tasks are watched again (same pid); the others carry their real `exit`.
    """

    task_id: str
    pid: int
    sandbox: Path
    alive: bool
    exit: TaskExit | None


class LaunchFailed(Exception):
    """The task could not start (bad user, missing executable, cgroup or sandbox failure).

    Nothing of the task runs. `exit` is the TASK_FAILED the agent should report; `wait()`
    on the task ID returns the same.
    """

    def __init__(self, message: str, reason: str = REASON_CONTAINER_LAUNCH_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    @property
    def exit(self) -> TaskExit:
        return TaskExit(state="TASK_FAILED", reason=self.reason, message=self.message)


class UnknownTask(KeyError):
    """The executor neither runs nor remembers a task with this ID."""
