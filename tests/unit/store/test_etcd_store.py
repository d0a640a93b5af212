"""EtcdStore against a real etcd node: grouping, several writers, fencing, lost answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tessera.store import (
    CommitOutcomeUnknown,
    Delete,
    NotLeader,
    Put,
    StaleRevision,
    StoreUnavailable,
    open_store,
)
from tessera.store.etcd import BatchTooLarge, EtcdStore
from tessera.store.etcd_client import EtcdClient, TxnResult, put_op
from tessera.store.etcd_commit import LeaderFence
from tessera.testing.etcd import MAX_TXN_OPS, EtcdCluster


@pytest.fixture
async def store(etcd_node: EtcdCluster, etcd_prefix: str) -> AsyncIterator[EtcdStore]:
    made = EtcdStore(etcd_node.endpoints, prefix=etcd_prefix, max_txn_ops=MAX_TXN_OPS)
    yield made
    await made.close()


async def etcd_revision(store: EtcdStore) -> int:
    revision, _ = await store.client.get_at(b"/")
    return revision


async def test_open_store_parses_etcd_urls(tmp_path: Path) -> None:
    # Nothing is dialled until the first call.
    store = open_store("etcd://h1:2379,h2:2380/prod?max_txn_ops=512", tmp_path)
    assert isinstance(store, EtcdStore)
    assert store.client.endpoints == [("h1", 2379), ("h2", 2380)]
    assert store.prefix == "/prod"
    assert store.max_txn_ops == 512
    default = open_store("etcd://h1", tmp_path)
    assert isinstance(default, EtcdStore)
    assert default.prefix == "/tessera"
    assert default.client.endpoints == [("h1", 2379)]
    assert EtcdStore(["http://h3:22379/"]).client.endpoints == [("h3", 22379)]
    with pytest.raises(ValueError, match="unknown etcd store options"):
        open_store("etcd://h1?fsync=off", tmp_path)


async def test_concurrent_commits_share_transactions_each_with_its_revision(
    store: EtcdStore,
) -> None:
    before = await etcd_revision(store)
    revisions = await asyncio.gather(
        *(store.commit([Put("tasks", f"t{i}", {"i": i})]) for i in range(50))
    )
    assert sorted(revisions) == list(range(1, 51))
    # Fewer etcd transactions than commits: they were grouped.
    assert await etcd_revision(store) - before < 50
    stale = store.commit([Put("tasks", "late", {})], expect_revision=3)
    fresh = store.commit([Put("tasks", "ok", {})])
    results = await asyncio.gather(stale, fresh, return_exceptions=True)
    assert isinstance(results[0], StaleRevision)
    assert results[1] == 51
    assert len(await store.load("tasks")) == 51
    assert await store.revision() == 51


async def test_later_write_to_the_same_object_wins_within_a_group(store: EtcdStore) -> None:
    await asyncio.gather(
        store.commit([Put("tasks", "t1", {"v": 1}), Put("tasks", "t1", {"v": 2})]),
        store.commit([Put("tasks", "t1", {"v": 3})]),
        store.commit([Delete("tasks", "t2"), Put("tasks", "t2", {"v": 4})]),
    )
    assert await store.load("tasks") == {"t1": {"v": 3}, "t2": {"v": 4}}
    await store.commit([Put("tasks", "t2", {"v": 5}), Delete("tasks", "t2")])
    assert await store.get("tasks", "t2") is None


async def test_two_writers_on_one_prefix_stay_in_one_order(
    etcd_node: EtcdCluster, etcd_prefix: str
) -> None:
    first = EtcdStore(etcd_node.endpoints, prefix=etcd_prefix)
    second = EtcdStore(etcd_node.endpoints, prefix=etcd_prefix)
    revisions = await asyncio.gather(
        *(
            (first if i % 2 else second).commit([Put("agents", f"a{i}", {"i": i})])
            for i in range(40)
        )
    )
    assert sorted(revisions) == list(range(1, 41))
    # `second` has not seen the last commits of `first`: its expectation must fail.
    assert await first.commit([Put("agents", "x", {})], expect_revision=40) == 41
    with pytest.raises(StaleRevision) as stale:
        await second.commit([Put("agents", "y", {})], expect_revision=40)
    assert stale.value.actual == 41
    assert await second.get("agents", "y") is None
    await first.close()
    await second.close()


async def test_keys_with_slashes_and_loads_larger_than_a_page(store: EtcdStore) -> None:
    await store.commit([Put("apps", "/shop/web", {"id": "/shop/web"})])
    await store.commit([Put("apps", "/shop", {"id": "/shop"})])
    assert await store.get("apps", "/shop/web") == {"id": "/shop/web"}
    assert set(await store.load("apps")) == {"/shop/web", "/shop"}
    for start in range(0, 2500, 500):
        await store.commit([Put("tasks", f"t{i:05}", {"i": i}) for i in range(start, start + 500)])
    loaded = await store.load("tasks")
    assert len(loaded) == 2500
    assert loaded["t02499"] == {"i": 2499}


async def test_batch_larger_than_etcd_takes_is_refused_before_sending(
    etcd_node: EtcdCluster, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd_node.endpoints, prefix=etcd_prefix)  # etcd's default: 128 ops
    with pytest.raises(BatchTooLarge, match="max-txn-ops"):
        await store.commit([Put("tasks", f"t{i}", {}) for i in range(200)])
    assert await store.revision() == 0
    await store.close()


async def make_leader_key(client: EtcdClient, key: bytes, ttl: int = 30) -> LeaderFence:
    lease = await client.grant_lease(ttl)
    result = await client.txn([], [put_op(key, b"{}", lease)])
    return LeaderFence(key, result.revision, lease)


async def test_fenced_commits_apply_only_while_the_leader_key_holds(store: EtcdStore) -> None:
    fence = await make_leader_key(store.client, store.leader_key("master"))
    leader = store.fenced(fence)
    assert await leader.commit([Put("tasks", "t1", {"v": 1})]) == 1
    await store.client.revoke_lease(fence.lease_id)  # the term ends: the key is gone
    with pytest.raises(NotLeader):
        await leader.commit([Put("tasks", "t1", {"v": 2}), Put("tasks", "t2", {})])
    # A new term under the same name does not revive the old fence.
    successor = await make_leader_key(store.client, store.leader_key("master"))
    with pytest.raises(NotLeader):
        await leader.commit([Put("tasks", "t1", {"v": 3})])
    assert await store.fenced(successor).commit([Put("tasks", "t3", {})]) == 2
    assert await store.load("tasks") == {"t1": {"v": 1}, "t3": {}}
    # Unfenced writers (tools, tests) are not affected by the election.
    assert await store.commit([Delete("tasks", "t3")]) == 3


async def test_each_fence_in_a_group_is_checked_on_its_own(store: EtcdStore) -> None:
    live = await make_leader_key(store.client, store.leader_key("a"))
    dead = await make_leader_key(store.client, store.leader_key("b"))
    await store.client.revoke_lease(dead.lease_id)
    results = await asyncio.gather(
        store.commit([Put("tasks", "1", {})], fence=live),
        store.commit([Put("tasks", "2", {})], fence=dead),
        store.commit([Put("tasks", "3", {})], fence=live),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], NotLeader)
    assert results[2] == 2
    assert set(await store.load("tasks")) == {"1", "3"}


def lose_answers(store: EtcdStore, *, apply_first: bool, times: int = 1) -> list[int]:
    """Make the next `times` transactions fail as if the connection dropped, after (or
    before) etcd applied them. Returns the list that counts the calls."""
    real_txn = store.client.txn
    calls: list[int] = []

    async def txn(*args: Any, **kwargs: Any) -> TxnResult:
        calls.append(1)
        if len(calls) <= times:
            if apply_first:
                await real_txn(*args, **kwargs)
            raise StoreUnavailable("connection reset")
        return await real_txn(*args, **kwargs)

    store.client.txn = txn  # type: ignore[method-assign]
    return calls


async def test_a_commit_whose_answer_was_lost_but_applied_is_not_applied_twice(
    store: EtcdStore,
) -> None:
    await store.commit([Put("tasks", "t0", {})])
    calls = lose_answers(store, apply_first=True)
    assert await store.commit([Put("tasks", "t1", {})], expect_revision=1) == 2
    assert len(calls) == 1  # found applied by reading the counter, not sent again
    assert await store.revision() == 2


async def test_a_commit_that_did_not_reach_etcd_is_retried(store: EtcdStore) -> None:
    calls = lose_answers(store, apply_first=False, times=2)
    assert await store.commit([Put("tasks", "t1", {})]) == 1
    assert len(calls) == 3
    assert await store.load("tasks") == {"t1": {}}


async def test_lost_answer_after_another_writer_moved_on_is_reported_unknown(
    etcd_node: EtcdCluster, store: EtcdStore
) -> None:
    other = EtcdStore(etcd_node.endpoints, prefix=store.prefix)
    real_txn = store.client.txn

    async def txn(*args: Any, **kwargs: Any) -> TxnResult:
        await real_txn(*args, **kwargs)
        await other.commit([Put("tasks", "theirs", {})])
        raise StoreUnavailable("connection reset")

    store.client.txn = txn  # type: ignore[method-assign]
    with pytest.raises(CommitOutcomeUnknown):
        await store.commit([Put("tasks", "mine", {})])
    await other.close()


async def test_unreachable_etcd_is_store_unavailable_within_the_timeout() -> None:
    from tessera.testing.cluster import free_port

    store = EtcdStore([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=0.5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await store.get("tasks", "t1")
    with pytest.raises(StoreUnavailable):
        await store.commit([Put("tasks", "t1", {})])
    assert asyncio.get_running_loop().time() - started < 5
    await store.close()
