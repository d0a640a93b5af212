"""State stores behind one protocol; nothing outside this package knows which one runs."""

from __future__ import annotations

from pathlib import Path

from tessera.store.base import Delete, Operation, Put, StaleRevision, StateStore
from tessera.store.memory import MemoryStore
from tessera.store.sqlite import SqliteStore

__all__ = [
    "Delete",
    "MemoryStore",
    "Operation",
    "Put",
    "SqliteStore",
    "StaleRevision",
    "StateStore",
    "open_store",
]


def open_store(url: str, work_dir: Path) -> StateStore:
    """`sqlite` (default, `<work_dir>/state.db`), `sqlite:///path`, or `memory`."""
    if url in ("", "sqlite"):
        return SqliteStore(work_dir / "state.db")
    if url.startswith("sqlite://"):
        return SqliteStore(Path(url.removeprefix("sqlite://")))
    if url == "memory":
        return MemoryStore()
    raise ValueError(f"unknown store {url!r}: use sqlite, sqlite:///path or memory")
