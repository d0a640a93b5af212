"""Every store keeps the same contract: JSON objects by kind, atomic revisioned batches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.store import Delete, MemoryStore, Put, SqliteStore, StaleRevision, StateStore


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    made: StateStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "state.db")
    else:
        from tessera.store.etcd import EtcdStore

        etcd = request.getfixturevalue("etcd_node")
        made = EtcdStore(etcd.endpoints, prefix=request.getfixturevalue("etcd_prefix"))
    yield made
    await made.close()


async def test_put_get_load_delete(store: StateStore) -> None:
    assert await store.revision() == 0
    revision = await store.commit([Put("tasks", "t1", {"a": 1}), Put("tasks", "t2", {"a": 2})])
    assert revision == 1
    assert await store.get("tasks", "t1") == {"a": 1}
    assert await store.load("tasks") == {"t1": {"a": 1}, "t2": {"a": 2}}
    assert await store.load("agents") == {}
    await store.commit([Delete("tasks", "t1")])
    assert await store.get("tasks", "t1") is None
    assert await store.revision() == 2


async def test_stale_revision_rejects_whole_batch(store: StateStore) -> None:
    await store.commit([Put("tasks", "t1", {"v": 1})])
    with pytest.raises(StaleRevision):
        await store.commit(
            [Put("tasks", "t1", {"v": 2}), Put("tasks", "t9", {})], expect_revision=0
        )
    assert await store.get("tasks", "t1") == {"v": 1}
    assert await store.get("tasks", "t9") is None
    assert await store.commit([Put("tasks", "t1", {"v": 3})], expect_revision=1) == 2


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "state.db")
    await first.commit([Put("agents", "a1", {"hostname": "h1"})])
    await first.close()
    second = SqliteStore(tmp_path / "state.db")
    assert await second.get("agents", "a1") == {"hostname": "h1"}
    assert await second.revision() == 1
    mode = second._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    await second.close()


async def test_sqlite_groups_concurrent_commits_each_with_its_revision(tmp_path: Path) -> None:
    import asyncio

    store = SqliteStore(tmp_path / "state.db")
    revisions = await asyncio.gather(
        *(store.commit([Put("tasks", f"t{i}", {"i": i})]) for i in range(50))
    )
    assert sorted(revisions) == list(range(1, 51))
    stale = store.commit([Put("tasks", "late", {})], expect_revision=3)
    fresh = store.commit([Put("tasks", "ok", {})])
    results = await asyncio.gather(stale, fresh, return_exceptions=True)
    assert isinstance(results[0], StaleRevision)
    assert results[1] == 51
    assert len(await store.load("tasks")) == 51
    await store.close()
