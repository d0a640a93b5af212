"""Atomic writes, reserved space and disk-full messages of the agent's own files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tessera.agent import disk
from tessera.agent.disk import describe_os_error, is_disk_full, reserve_file, write_atomic


def _full(*_: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "a much longer first version")
    write_atomic(path, b"short")
    assert path.read_bytes() == b"short"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [path]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    monkeypatch.setattr(disk.os, "write", _full)
    with pytest.raises(OSError) as raised:
        write_atomic(path, "new")
    assert is_disk_full(raised.value)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_reserved_space_is_written_into_and_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    reserve_file(path, 4096)
    assert os.path.getsize(tmp_path / "task.json.tmp") == 4096
    write_atomic(path, '{"pid": 1}')
    assert path.read_text() == '{"pid": 1}'
    assert not (tmp_path / "task.json.tmp").exists()


def test_reserve_that_finds_no_space_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk.os, "posix_fallocate", _full)
    with pytest.raises(OSError):
        reserve_file(tmp_path / "task.json")
    assert list(tmp_path.iterdir()) == []


def test_messages_name_a_full_disk() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/w/meta/x.tmp")
    assert describe_os_error(full) == (
        "the agent's disk is full (No space left on device: /w/meta/x.tmp)"
    )
    assert describe_os_error(full, "/w/meta") == (
        "the agent's disk is full (No space left on device: /w/meta)"
    )
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert describe_os_error(quota) == "the agent's disk is full (Disk quota exceeded)"
    denied = OSError(errno.EACCES, "Permission denied", "/w/x")
    assert describe_os_error(denied) == "Permission denied: /w/x"
    assert not is_disk_full(denied) and not is_disk_full(ValueError("x"))
