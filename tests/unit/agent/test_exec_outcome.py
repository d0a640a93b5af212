"""How an ended task's evidence maps to Mesos terminal states and reasons."""

from __future__ import annotations

import pytest

from tessera.agent.exec_outcome import (
    Evidence,
    WrapperStatus,
    decide_exit,
    last_line,
    parse_status,
    split_status,
)


def evidence(status: WrapperStatus | None, **changes: object) -> Evidence:
    fields: dict[str, object] = {
        "status": status,
        "kill_requested": False,
        "oom_kills": 0,
        "limit_hits": 0,
        "mem_mib": 64.0,
    }
    fields.update(changes)
    return Evidence(**fields)  # type: ignore[arg-type]


def exited(code: int) -> WrapperStatus:
    return WrapperStatus(exit_status=code)


def test_parse_status() -> None:
    assert parse_status("0\n") == WrapperStatus(exit_status=0)
    assert parse_status("137\n") == WrapperStatus(exit_status=137)
    assert parse_status("error cannot join cgroup /x\n") == WrapperStatus(
        setup_failed="cannot join cgroup /x"
    )
    assert parse_status("") is None
    assert parse_status("garbage") is None


@pytest.mark.parametrize(
    ("status", "split"), [(0, (0, None)), (1, (1, None)), (128, (128, None)), (137, (None, 9))]
)
def test_split_status(status: int, split: tuple[int | None, int | None]) -> None:
    assert split_status(status) == split


def test_zero_is_finished() -> None:
    result = decide_exit(evidence(exited(0)))
    assert (result.state, result.reason, result.exit_code) == ("TASK_FINISHED", None, 0)


def test_non_zero_is_failed_with_the_code() -> None:
    result = decide_exit(evidence(exited(3)))
    assert result.state == "TASK_FAILED"
    assert result.reason == "REASON_COMMAND_EXECUTOR_FAILED"
    assert result.message == "Command exited with status 3"
    assert result.exit_code == 3


def test_signal_is_named() -> None:
    result = decide_exit(evidence(exited(128 + 11)))
    assert (result.exit_code, result.signal) == (None, 11)
    assert result.message == "Command terminated by SIGSEGV"


def test_not_found_carries_the_shell_error() -> None:
    result = decide_exit(evidence(exited(127), stderr_tail="sh: 1: nosuchcmd: not found"))
    assert result.message == "Command exited with status 127: sh: 1: nosuchcmd: not found"


def test_oom_kill_is_a_memory_limitation() -> None:
    result = decide_exit(evidence(exited(137), oom_kills=1))
    assert result.state == "TASK_FAILED"
    assert result.reason == "REASON_CONTAINER_LIMITATION_MEMORY"
    assert "64 MiB" in result.message
    assert result.signal == 9


def test_oom_even_when_the_main_process_survived() -> None:
    result = decide_exit(evidence(exited(0), oom_kills=2))
    assert result.reason == "REASON_CONTAINER_LIMITATION_MEMORY"


def test_old_kernels_infer_oom_from_limit_hits_and_sigkill() -> None:
    assert decide_exit(evidence(exited(137), oom_kills=None, limit_hits=4)).reason == (
        "REASON_CONTAINER_LIMITATION_MEMORY"
    )
    assert decide_exit(evidence(exited(1), oom_kills=None, limit_hits=4)).reason == (
        "REASON_COMMAND_EXECUTOR_FAILED"
    )


def test_our_kill_wins_over_everything() -> None:
    result = decide_exit(evidence(exited(137), kill_requested=True, oom_kills=1))
    assert (result.state, result.reason) == ("TASK_KILLED", None)
    assert decide_exit(evidence(None, kill_requested=True)).state == "TASK_KILLED"


def test_no_status_means_the_executor_died() -> None:
    result = decide_exit(evidence(None, wrapper_pid=42))
    assert (result.state, result.reason) == ("TASK_FAILED", "REASON_EXECUTOR_TERMINATED")
    assert "pid 42" in result.message


def test_setup_failure_is_a_launch_failure() -> None:
    result = decide_exit(evidence(WrapperStatus(setup_failed="cannot join cgroup /x")))
    assert result.reason == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "cannot join cgroup /x" in result.message


def test_last_line() -> None:
    assert last_line("a\nb\n\n  \n") == "b"
    assert last_line("") == ""
