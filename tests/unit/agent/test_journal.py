from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from tessera.agent import journal as journal_module
from tessera.agent.journal import NotDurable, StatusJournal
from tessera.model.protocol import StatusUpdate
from tessera.model.task import TaskState


def _update(uuid: str, state: TaskState = TaskState.TASK_RUNNING) -> StatusUpdate:
    return StatusUpdate(uuid, "t.1", state, 1.0)


async def test_unacknowledged_updates_survive_restart(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("u1"))
    await journal.record(_update("u2", TaskState.TASK_FINISHED))
    assert journal.acknowledge("u1")
    journal.close()
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u2"]
    latest = reopened.latest_for("t.1")
    assert latest is not None and latest.state is TaskState.TASK_FINISHED
    reopened.close()


async def test_record_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    await asyncio.gather(*(journal.record(_update(f"u{i}")) for i in range(20)))
    lines = journal.path.read_text().splitlines()
    assert len(lines) == 20
    journal.close()


async def test_torn_last_line_is_dropped_and_appends_stay_readable(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("u1"))
    journal.close()
    with open(journal.path, "a") as handle:
        handle.write('{"uuid": "u2", "task_')
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u1"]
    await reopened.record(_update("u3"))
    reopened.close()
    again = StatusJournal(tmp_path)
    assert [u.uuid for u in again.pending()] == ["u1", "u3"]
    again.close()


async def test_compaction_keeps_pending(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("keep"))
    for index in range(2100):
        await journal.record(_update(f"u{index}"))
        journal.acknowledge(f"u{index}")
    journal.close()
    lines = journal.path.read_text().splitlines()
    assert len(lines) < 300
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["keep"]
    reopened.close()


async def test_unknown_ack_is_harmless(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    assert not journal.acknowledge("nope")
    journal.close()


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, budget: int) -> list[int]:
    """Writes get `budget` bytes in all, then ENOSPC (after a short write, like a real disk)."""
    left = [budget]
    real_write = os.write

    def write_all(descriptor: int, data: bytes) -> None:
        written = real_write(descriptor, data[: left[0]])
        left[0] -= written
        if written < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module, "write_all", write_all)
    return left


async def test_a_write_the_full_disk_refuses_is_not_durable_and_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("u1"))
    before = journal.path.read_bytes()
    budget = _disk_fills_after(monkeypatch, 10)
    with pytest.raises(NotDurable, match="disk is full"):
        await journal.record(_update("u2"))
    assert journal.path.read_bytes() == before, "the short write was cut off"
    assert [u.uuid for u in journal.pending()] == ["u1", "u2"], "u2 is still sent"
    assert "NOT durable" in caplog.text
    budget[0] = 10**6  # space again: the held-back update goes first, in order
    await journal.record(_update("u3"))
    journal.close()
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u1", "u2", "u3"]
    reopened.close()


async def test_held_back_update_acknowledged_before_space_returns_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = StatusJournal(tmp_path)
    budget = _disk_fills_after(monkeypatch, 0)
    with pytest.raises(NotDurable):
        await journal.record(_update("u1"))
    assert journal.acknowledge("u1") is not None
    budget[0] = 10**6
    await journal.record(_update("u2"))
    journal.close()
    assert "u1" not in journal.path.read_text()
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u2"]
    reopened.close()


async def test_acks_are_kept_when_their_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("u1"))
    journal.acknowledge("u1")
    budget = _disk_fills_after(monkeypatch, 0)
    with pytest.raises(NotDurable):
        await journal.record(_update("u2"))
    budget[0] = 10**6
    journal.close()
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u2"]
    reopened.close()


async def test_journal_reserves_space_past_its_end(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    await journal.record(_update("u1"))
    allocated = os.stat(journal.path).st_blocks * 512
    journal.close()
    if allocated < 4096:  # the filesystem cannot preallocate (KEEP_SIZE): nothing to check
        pytest.skip(f"{tmp_path} does not support fallocate(FALLOC_FL_KEEP_SIZE)")
    assert allocated >= journal_module.RESERVE_BYTES
    assert os.path.getsize(journal.path) < 1000
