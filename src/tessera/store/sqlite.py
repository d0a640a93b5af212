"""The embedded default StateStore: one SQLite file in WAL mode, fsynced on every commit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tessera.store.base import Delete, Operation, Put, StaleRevision
from tessera.store.group_commit import GroupCommitter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""

_T = TypeVar("_T")
_Batch = tuple[Sequence[Operation], int | None]


class SqliteStore:
    """All database work runs on one worker thread, in order. Commits that arrive while a
    transaction is being made durable are grouped into the next transaction (one fsync), each
    keeping its own revision number and its own `expect_revision` check."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction is on disk before COMMIT returns, so an acknowledged write
        # survives power loss, not only a crash of the process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._group: GroupCommitter[_Batch, int] = GroupCommitter(self._commit_many, self._worker)

    async def _run(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        def read() -> dict[str, dict[str, Any]]:
            rows = self._db.execute("SELECT key, value FROM objects WHERE kind = ?", (kind,))
            return {key: json.loads(value) for key, value in rows}

        return await self._run(read)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            row = self._db.execute(
                "SELECT value FROM objects WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return None if row is None else dict(json.loads(row[0]))

        return await self._run(read)

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int:
        return await self._group.submit((operations, expect_revision))

    def _commit_many(self, batches: Sequence[_Batch]) -> list[int | BaseException]:
        db = self._db
        outcomes: list[int | BaseException] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            revision = self._current_revision()
            for operations, expect_revision in batches:
                if expect_revision is not None and expect_revision != revision:
                    outcomes.append(StaleRevision(expect_revision, revision))
                    continue
                revision += 1
                self._apply(operations, revision)
                outcomes.append(revision)
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcomes

    def _apply(self, operations: Sequence[Operation], revision: int) -> None:
        for op in operations:
            if isinstance(op, Put):
                self._db.execute(
                    "INSERT OR REPLACE INTO objects (kind, key, value, revision) "
                    "VALUES (?, ?, ?, ?)",
                    (op.kind, op.key, json.dumps(op.value), revision),
                )
            elif isinstance(op, Delete):
                self._db.execute(
                    "DELETE FROM objects WHERE kind = ? AND key = ?", (op.kind, op.key)
                )

    def _current_revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        return int(row[0])

    async def revision(self) -> int:
        return await self._run(self._current_revision)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._worker.shutdown(wait=True)
