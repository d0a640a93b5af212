from __future__ import annotations

import asyncio
from pathlib import Path

from tessera.agent.journal import StatusJournal
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
