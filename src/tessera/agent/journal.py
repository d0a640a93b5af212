"""The agent's status-update journal: every update is on disk before it is sent, and is
resent until the master acknowledges it (at-least-once delivery, as Mesos agents do).

File work runs on one worker thread; updates recorded while an fsync is in flight share the
next one (group commit), so a burst of task launches costs a few fsyncs, not one each.

A full disk: the journal keeps `RESERVE_BYTES` allocated past its end (thousands of updates),
so a disk filled by tasks does not stop it. When even that is used up, `record()` raises
NotDurable: the failed write is cut off the file (no torn line), the update stays pending in
memory (it is still sent, and the master's acknowledgement is then its only durable record),
and every later write retries it first, so it is on disk, in order, once space returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tessera.agent.disk import describe_os_error, is_disk_full, reserve_beyond_end, write_all
from tessera.model.protocol import StatusUpdate
from tessera.store.group_commit import GroupCommitter

log = logging.getLogger(__name__)

# Rewrite the journal once this many acknowledged entries have piled up in it.
_COMPACT_AFTER = 2000
# Space allocated past the journal's end (about 3,000 updates), renewed when half used.
RESERVE_BYTES = 1 << 20


class NotDurable(Exception):
    """The update could not be written to disk: it is pending in memory only."""


class StatusJournal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "status-updates.jsonl"
        self._pending: dict[str, StatusUpdate] = {}
        self._acked_in_file = 0
        self._unwritten_acks: list[str] = []
        # Updates whose write failed, by UUID, oldest first: retried before any new line.
        self._unjournaled: dict[str, str] = {}
        self._reserved_to = 0
        self._replay()
        self._fd = self._open(self.path)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._group: GroupCommitter[tuple[str, str], None] = GroupCommitter(
            self._append, self._worker
        )
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

    def _open(self, path: Path) -> int:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._reserved_to = 0
        self._renew_reserve(descriptor, os.fstat(descriptor).st_size)
        return descriptor

    def _renew_reserve(self, descriptor: int, size: int) -> None:
        if self._reserved_to - size >= RESERVE_BYTES // 2:
            return
        try:
            reserve_beyond_end(descriptor, size, RESERVE_BYTES)
        except OSError as error:
            if self._reserved_to >= 0:  # say it once, until a reservation works again
                level = logging.WARNING if is_disk_full(error) else logging.INFO
                reason = describe_os_error(error, self.path)
                log.log(level, "status journal: cannot reserve space: %s", reason)
            self._reserved_to = -1
            return
        self._reserved_to = size + RESERVE_BYTES

    async def record(self, update: StatusUpdate) -> None:
        """Durable on return; raises NotDurable when it could not be written (the update
        stays pending, in memory only, and is retried with every later write)."""
        self._pending[update.uuid] = update
        await self._group.submit((update.uuid, json.dumps(update.to_json())))

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

    def _append(self, entries: Sequence[tuple[str, str]]) -> list[None]:
        """On the worker thread: acks, then updates held back by a failed write, then these."""
        acks, self._unwritten_acks = self._unwritten_acks, []
        held = self._unjournaled
        # An update acknowledged before it ever reached the file needs neither line.
        written_acks = [uuid for uuid in acks if held.pop(uuid, None) is None]
        lines = [*held.values(), *(line for _, line in entries)]
        text = "".join(json.dumps({"ack": uuid}) + "\n" for uuid in written_acks)
        try:
            self._write(text + "".join(line + "\n" for line in lines))
        except OSError as error:
            self._unwritten_acks[:0] = written_acks
            self._unjournaled = {**held, **dict(entries)}
            message = (
                f"status journal {self.path}: cannot write {len(self._unjournaled)} status "
                f"update(s): {describe_os_error(error, self.path.parent)}; they are sent to "
                "the master but are NOT durable until the disk has space again"
            )
            log.error("%s", message)
            raise NotDurable(message) from error
        if held:
            log.warning(
                "status journal %s: writable again; %d held-back update(s) are durable now",
                self.path,
                len(held),
            )
        self._unjournaled = {}
        return [None] * len(entries)

    def _write(self, text: str) -> None:
        """Append and fsync, or leave the file as it was (a failed write is cut off)."""
        data = text.encode()
        size = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, size)
            except OSError as error:  # replay drops a torn last line anyway
                log.error("status journal: cannot cut off a failed write: %s", error)
            raise
        self._renew_reserve(self._fd, size + len(data))

    def _start_compaction(self) -> None:
        # The snapshot is taken here, on the event loop's thread, which owns `_pending`.
        keep = {uuid: json.dumps(update.to_json()) for uuid, update in self._pending.items()}
        self._unwritten_acks = []
        self._acked_in_file = 0
        loop = asyncio.get_running_loop()
        self._compaction = loop.run_in_executor(self._worker, self._rewrite, keep)
        self._compaction.add_done_callback(self._compaction_done)

    def _compaction_done(self, _: asyncio.Future[None]) -> None:
        self._compaction = None

    def _rewrite(self, keep: dict[str, str]) -> None:
        temporary = self.path.with_suffix(".tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(descriptor, "".join(line + "\n" for line in keep.values()).encode())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as error:
            # The old file stays (its acks not yet written are lost: a few more resends).
            temporary.unlink(missing_ok=True)
            log.warning("status journal: cannot compact: %s", describe_os_error(error))
            self._unjournaled = {u: line for u, line in self._unjournaled.items() if u in keep}
            return
        os.close(self._fd)
        os.replace(temporary, self.path)
        self._fd = self._open(self.path)
        # Every held-back update still pending was in `keep`; the others were acknowledged.
        self._unjournaled = {}

    def close(self) -> None:
        def finish() -> None:
            if self._unwritten_acks or self._unjournaled:
                with contextlib.suppress(NotDurable):  # logged by _append
                    self._append([])
            os.close(self._fd)

        self._worker.submit(finish).result()
        self._worker.shutdown(wait=True)
