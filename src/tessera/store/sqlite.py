"""The embedded default StateStore: one SQLite file in WAL mode, fsynced on every commit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.store.base import Delete, Operation, Put, StaleRevision

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


class SqliteStore:
    """Commits run synchronously on the caller's thread: a WAL commit with fsync costs well
    under a millisecond on local disks, less than handing the work to a thread would."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction is on disk before COMMIT returns, so an acknowledged write
        # survives power loss, not only a crash of the process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT key, value FROM objects WHERE kind = ?", (kind,))
        return {key: json.loads(value) for key, value in rows}

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT value FROM objects WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            current = self._current_revision()
            if expect_revision is not None and expect_revision != current:
                raise StaleRevision(expect_revision, current)
            revision = current + 1
            for op in operations:
                if isinstance(op, Put):
                    db.execute(
                        "INSERT OR REPLACE INTO objects (kind, key, value, revision) "
                        "VALUES (?, ?, ?, ?)",
                        (op.kind, op.key, json.dumps(op.value), revision),
                    )
                elif isinstance(op, Delete):
                    db.execute("DELETE FROM objects WHERE kind = ? AND key = ?", (op.kind, op.key))
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return revision

    def _current_revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        return int(row[0])

    async def revision(self) -> int:
        return self._current_revision()

    async def close(self) -> None:
        self._db.close()
