"""The agent's status-update journal: every update is on disk before it is sent, and is
resent until the master acknowledges it (at-least-once delivery, as Mesos agents do).

File work runs on one worker thread; updates recorded while an fsync is in flight share the
next one (group commit), so a burst of task launches costs a few fsyncs, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tessera.model.protocol import StatusUpdate
from tessera.store.group_commit import GroupCommitter

# Rewrite the journal once this many acknowledged entries have piled up in it.
_COMPACT_AFTER = 2000


class StatusJournal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "status-updates.jsonl"
        self._pending: dict[str, StatusUpdate] = {}
        self._acked_in_file = 0
        self._unwritten_acks: list[str] = []
        self._replay()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (long-lived)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._group: GroupCommitter[str, None] = GroupCommitter(self._append, self._worker)
        self._compaction: asyncio.Future[None] | None = None

    def _replay(self) -> None:
        if not self.path.exists():
            return
        self._drop_torn_tail()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                if "ack" in entry:
                    self._pending.pop(entry["ack"], None)
                    self._acked_in_file += 1
                else:
                    update = StatusUpdate.from_json(entry)
                    self._pending[update.uuid] = update

    def _drop_torn_tail(self) -> None:
        """Cut a half-written last line (a crash mid-write): it was never sent, and the next
        append must start on a clean line."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.truncate(self.path, end)

    async def record(self, update: StatusUpdate) -> None:
        """Durable on return."""
        self._pending[update.uuid] = update
        await self._group.submit(json.dumps(update.to_json()))

    def acknowledge(self, uuid: str) -> StatusUpdate | None:
        """Forget an acknowledged update; returns it, or None when it was not pending."""
        update = self._pending.pop(uuid, None)
        if update is None:
            return None
        # Acks are written with the next flush and need no fsync of their own: a lost ack
        # only means one more (idempotent) resend.
        self._unwritten_acks.append(uuid)
        self._acked_in_file += 1
        if self._acked_in_file >= _COMPACT_AFTER and self._compaction is None:
            self._start_compaction()
        return update

    def pending(self) -> list[StatusUpdate]:
        """Unacknowledged updates, oldest first."""
        return list(self._pending.values())

    def latest_for(self, task_id: str) -> StatusUpdate | None:
        latest = None
        for update in self._pending.values():
            if update.task_id == task_id:
                latest = update
        return latest

    def _append(self, lines: Sequence[str]) -> list[None]:
        acks, self._unwritten_acks = self._unwritten_acks, []
        text = "".join(json.dumps({"ack": uuid}) + "\n" for uuid in acks)
        self._file.write(text + "".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        return [None] * len(lines)

    def _start_compaction(self) -> None:
        # The snapshot is taken here, on the event loop's thread, which owns `_pending`.
        keep = [json.dumps(update.to_json()) for update in self._pending.values()]
        self._unwritten_acks = []
        self._acked_in_file = 0
        loop = asyncio.get_running_loop()
        self._compaction = loop.run_in_executor(self._worker, self._rewrite, keep)
        self._compaction.add_done_callback(self._compaction_done)

    def _compaction_done(self, _: asyncio.Future[None]) -> None:
        self._compaction = None

    def _rewrite(self, keep: list[str]) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in keep))
            handle.flush()
            os.fsync(handle.fileno())
        self._file.close()
        os.replace(temporary, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        def finish() -> None:
            if self._unwritten_acks:
                self._append([])
            self._file.close()

        self._worker.submit(finish).result()
        self._worker.shutdown(wait=True)
