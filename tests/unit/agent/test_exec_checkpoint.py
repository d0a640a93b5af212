"""The per-task checkpoint directory and the pid-reuse guard."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tessera.agent.exec_checkpoint import (
    MetaStore,
    TaskCheckpoint,
    boot_id,
    process_start_ticks,
)
from tessera.agent.exec_types import TaskExit


def checkpoint(task_id: str = "web.1") -> TaskCheckpoint:
    return TaskCheckpoint(
        task_id=task_id,
        pid=1234,
        start_ticks=5678,
        boot_id="b",
        sandbox="/w/sandboxes/web.1",
        cgroups=("/sys/fs/cgroup/tessera/web.1",),
        user="nobody",
        mem_mib=64.0,
        kill_grace_seconds=3.0,
        started_at=1.5,
    )


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "meta")
    store.create("web.1")
    store.write_checkpoint(checkpoint())
    assert store.read_checkpoint("web.1") == checkpoint()
    assert store.task_ids() == ["web.1"]
    assert not (store.task_dir("web.1") / "task.json.tmp").exists()


def test_torn_or_missing_checkpoint_reads_as_none(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    assert store.read_checkpoint("nope") is None
    store.create("t")
    (store.task_dir("t") / "task.json").write_text('{"task_id": "t", "pid"')
    assert store.read_checkpoint("t") is None


def test_exit_kill_marker_status_and_forget(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    store.create("t")
    assert not store.kill_requested("t")
    store.mark_kill("t")
    assert store.kill_requested("t")
    store.status_path("t").write_text("3\n")
    assert store.read_status("t") == "3\n"
    result = TaskExit("TASK_FAILED", "REASON_COMMAND_EXECUTOR_FAILED", "Command exited", 3)
    store.write_exit("t", result)
    assert store.read_exit("t") == result
    store.forget("t")
    assert store.task_ids() == []


def test_start_ticks_identify_a_process() -> None:
    mine = process_start_ticks(os.getpid())
    assert mine is not None and mine > 0
    assert process_start_ticks(os.getpid()) == mine
    assert process_start_ticks(2**22 + 1) is None  # above pid_max: no such process


def test_boot_id_is_stable() -> None:
    assert boot_id() == boot_id() != ""


def test_create_reserves_room_for_both_checkpoints(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    store.create("t")
    reserved = sorted(path.name for path in store.task_dir("t").iterdir())
    assert reserved == ["exit.json.tmp", "exit_status", "task.json.tmp"]
    assert store.read_status("t") == ""  # reserved past its end, still empty
    store.write_checkpoint(checkpoint("t"))
    assert store.read_checkpoint("t") == checkpoint("t")


def test_create_without_room_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    store = MetaStore(tmp_path)
    with pytest.raises(OSError):
        store.create("t")
    assert store.task_ids() == []
