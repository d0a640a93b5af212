"""The agent's status-update journal: every update is on disk before it is sent, and is
resent until the master acknowledges it (at-least-once delivery, as Mesos agents do)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tessera.model.protocol import StatusUpdate

# Rewrite the journal once this many acknowledged entries have piled up in it.
_COMPACT_AFTER = 2000


class StatusJournal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "status-updates.jsonl"
        self._pending: dict[str, StatusUpdate] = {}
        self._acked_in_file = 0
        self._replay()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (long-lived)

    def _replay(self) -> None:
        if not self.path.exists():
            return
        self._drop_torn_tail()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write: it was never sent
                if "ack" in entry:
                    self._pending.pop(entry["ack"], None)
                    self._acked_in_file += 1
                else:
                    update = StatusUpdate.from_json(entry)
                    self._pending[update.uuid] = update

    def _drop_torn_tail(self) -> None:
        """Cut a half-written last line (a crash mid-write), so the next append starts clean."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.truncate(self.path, end)

    def record(self, update: StatusUpdate) -> None:
        """Durable on return."""
        self._pending[update.uuid] = update
        self._write(json.dumps(update.to_json()))

    def acknowledge(self, uuid: str) -> bool:
        if self._pending.pop(uuid, None) is None:
            return False
        # Acks need not be fsynced: a lost ack only means one more (idempotent) resend.
        self._file.write(json.dumps({"ack": uuid}) + "\n")
        self._file.flush()
        self._acked_in_file += 1
        if self._acked_in_file >= _COMPACT_AFTER:
            self._compact()
        return True

    def pending(self) -> list[StatusUpdate]:
        """Unacknowledged updates, oldest first."""
        return list(self._pending.values())

    def latest_for(self, task_id: str) -> StatusUpdate | None:
        latest = None
        for update in self._pending.values():
            if update.task_id == task_id:
                latest = update
        return latest

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _compact(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            for update in self._pending.values():
                handle.write(json.dumps(update.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._file.close()
        os.replace(temporary, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._acked_in_file = 0

    def close(self) -> None:
        self._file.close()
