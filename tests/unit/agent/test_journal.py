from __future__ import annotations

from pathlib import Path

from tessera.agent.journal import StatusJournal
from tessera.model.protocol import StatusUpdate
from tessera.model.task import TaskState


def _update(uuid: str, state: TaskState = TaskState.TASK_RUNNING) -> StatusUpdate:
    return StatusUpdate(uuid, "t.1", state, 1.0)


def test_unacknowledged_updates_survive_restart(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    journal.record(_update("u1"))
    journal.record(_update("u2", TaskState.TASK_FINISHED))
    assert journal.acknowledge("u1")
    journal.close()
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u2"]
    latest = reopened.latest_for("t.1")
    assert latest is not None and latest.state is TaskState.TASK_FINISHED
    reopened.close()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    journal.record(_update("u1"))
    journal.close()
    with open(journal.path, "a") as handle:
        handle.write('{"uuid": "u2", "task_')
    reopened = StatusJournal(tmp_path)
    assert [u.uuid for u in reopened.pending()] == ["u1"]
    reopened.record(_update("u3"))
    reopened.close()
    assert [u.uuid for u in StatusJournal(tmp_path).pending()] == ["u1", "u3"]


def test_compaction_keeps_pending(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    journal.record(_update("keep"))
    for index in range(2100):
        journal.record(_update(f"u{index}"))
        journal.acknowledge(f"u{index}")
    journal.close()
    lines = journal.path.read_text().splitlines()
    assert len(lines) < 300
    assert [u.uuid for u in StatusJournal(tmp_path).pending()] == ["keep"]


def test_unknown_ack_is_harmless(tmp_path: Path) -> None:
    journal = StatusJournal(tmp_path)
    assert not journal.acknowledge("nope")
