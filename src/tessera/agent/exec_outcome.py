"""Pure rules turning what a task left behind (status file, OOM counters, kill) into a TaskExit."""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass

from tessera.agent.exec_types import (
    REASON_COMMAND_EXECUTOR_FAILED,
    REASON_CONTAINER_LAUNCH_FAILED,
    REASON_CONTAINER_LIMITATION_MEMORY,
    REASON_EXECUTOR_TERMINATED,
    TaskExit,
)

_HIGHEST_SIGNAL = 64


@dataclass(frozen=True, slots=True)
class WrapperStatus:
    """What the task wrapper wrote: the command's shell exit status, or why its setup failed."""

    exit_status: int | None = None
    setup_failed: str | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything known about an ended task, gathered by the executor before cleanup."""

    status: WrapperStatus | None
    kill_requested: bool
    oom_kills: int | None
    limit_hits: int
    mem_mib: float
    stderr_tail: str = ""
    wrapper_pid: int | None = None


def parse_status(text: str) -> WrapperStatus | None:
    """`<status>` or `error <what failed>`; None for an empty or torn file."""
    word, _, rest = text.strip().partition(" ")
    if word == "error":
        return WrapperStatus(setup_failed=rest or "unknown error")
    try:
        return WrapperStatus(exit_status=int(word))
    except ValueError:
        return None


def split_status(status: int) -> tuple[int | None, int | None]:
    """(exit_code, signal) from a shell status: above 128 means killed by signal status-128."""
    if 128 < status <= 128 + _HIGHEST_SIGNAL:
        return None, status - 128
    return status, None


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _oom(evidence: Evidence, signal: int | None) -> bool:
    if evidence.oom_kills is not None:
        return evidence.oom_kills > 0
    # Kernels before 4.13 have no oom_kill counter: a SIGKILL after hitting the limit is one.
    return evidence.limit_hits > 0 and signal == signals.SIGKILL


def decide_exit(evidence: Evidence) -> TaskExit:
    """Mesos' rules: killed by us > OOM > could not start > exit status."""
    status = evidence.status
    code, signal = (None, None)
    if status is not None and status.exit_status is not None:
        code, signal = split_status(status.exit_status)
    ended = _describe(code, signal)
    if evidence.kill_requested:
        return TaskExit("TASK_KILLED", None, f"Task killed ({ended})", code, signal)
    if _oom(evidence, signal):
        kills = evidence.oom_kills or 1
        message = (
            f"Memory limit exceeded: the task reached its limit of {evidence.mem_mib:g} MiB "
            f"and the OOM killer ended {kills} of its processes ({ended})"
        )
        return TaskExit("TASK_FAILED", REASON_CONTAINER_LIMITATION_MEMORY, message, code, signal)
    if status is None:
        message = "the task's executor ended without recording an exit status"
        if evidence.wrapper_pid is not None:
            message = f"{message} (pid {evidence.wrapper_pid} was killed from outside the agent?)"
        return TaskExit("TASK_FAILED", REASON_EXECUTOR_TERMINATED, message)
    if status.setup_failed is not None:
        message = f"task setup failed: {status.setup_failed}"
        return TaskExit(
            "TASK_FAILED", REASON_CONTAINER_LAUNCH_FAILED, _with_tail(message, evidence)
        )
    if code == 0:
        return TaskExit("TASK_FINISHED", None, "Command exited with status 0", 0, None)
    message = f"Command {ended}"
    if code in (126, 127):
        message = _with_tail(message, evidence)
    return TaskExit("TASK_FAILED", REASON_COMMAND_EXECUTOR_FAILED, message, code, signal)


def _describe(code: int | None, signal: int | None) -> str:
    if signal is not None:
        return f"terminated by {signal_name(signal)}"
    if code is not None:
        return f"exited with status {code}"
    return "no exit status"


def _with_tail(message: str, evidence: Evidence) -> str:
    return f"{message}: {evidence.stderr_tail}" if evidence.stderr_tail else message


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a log tail, for error messages."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:limit]
    return ""
