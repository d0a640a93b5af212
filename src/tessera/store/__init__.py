"""State stores behind one protocol; nothing outside this package knows which one runs."""

from __future__ import annotations

from pathlib import Path

from tessera.store.base import (
    CommitOutcomeUnknown,
    Delete,
    NotLeader,
    Operation,
    Put,
    StaleRevision,
    StateStore,
    StoreUnavailable,
)
from tessera.store.memory import MemoryStore
from tessera.store.sqlite import SqliteStore

__all__ = [
    "CommitOutcomeUnknown",
    "Delete",
    "MemoryStore",
    "NotLeader",
    "Operation",
    "Put",
    "SqliteStore",
    "StaleRevision",
    "StateStore",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str, work_dir: Path) -> StateStore:
    """`sqlite` (default, `<work_dir>/state.db`), `sqlite:///path`, `memory`, or
    `etcd://h1:2379,h2:2379[/prefix][?max_txn_ops=N]` (several masters; see docs/etcd.md)."""
    if url in ("", "sqlite"):
        return SqliteStore(work_dir / "state.db")
    if url.startswith("sqlite://"):
        return SqliteStore(Path(url.removeprefix("sqlite://")))
    if url == "memory":
        return MemoryStore()
    if url.startswith("etcd://"):
        from tessera.store.etcd_url import open_etcd_store  # aetcd/grpc load only when used

        return open_etcd_store(url)
    raise ValueError(
        f"unknown store {url!r}: use sqlite, sqlite:///path, memory or etcd://host:port,..."
    )
