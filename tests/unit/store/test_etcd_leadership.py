"""Leader election on a real etcd node: one leader, prompt hand-over, and a fence that
refuses a deposed leader's writes even while it still believes it leads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tessera.store import NotLeader, Put, StoreUnavailable
from tessera.store.etcd import EtcdStore
from tessera.store.etcd_client import delete_op
from tessera.store.leadership import LeaderInfo, Leadership
from tessera.testing.etcd import EtcdCluster


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


@pytest.fixture
async def store(etcd_node: EtcdCluster, etcd_prefix: str) -> AsyncIterator[EtcdStore]:
    made = EtcdStore(etcd_node.endpoints, prefix=etcd_prefix, timeout=2.0)
    yield made
    await made.close()


def candidate(store: EtcdStore, name: str, lease_ttl: int = 2, **kwargs: Any) -> Leadership:
    return Leadership(
        store,
        "master",
        lease_ttl,
        candidate_id=name,
        url=f"http://{name}:5050",
        retry_period=0.2,
        **kwargs,
    )


async def test_one_leader_followers_see_it_and_take_over_when_it_resigns(
    store: EtcdStore,
) -> None:
    lost: list[str] = []
    seen_by_b: list[LeaderInfo | None] = []
    a = candidate(store, "a", on_lost=lost.append)
    b = candidate(store, "b", on_leader=seen_by_b.append)
    fence_a = await a.campaign(timeout=5)
    assert a.is_leader
    with pytest.raises(TimeoutError):
        await b.campaign(timeout=0.5)
    assert not b.is_leader
    leader = await b.current_leader()
    assert leader == LeaderInfo("a", "http://a:5050", fence_a.create_revision)
    assert seen_by_b[-1] == leader

    b_campaign = asyncio.create_task(b.campaign(timeout=5))
    await asyncio.sleep(0.3)
    started = asyncio.get_running_loop().time()
    await a.resign()
    fence_b = await b_campaign
    assert asyncio.get_running_loop().time() - started < 1.0  # the watch, not the lease TTL
    assert lost == ["resigned"]
    assert not a.is_leader
    assert fence_b.create_revision > fence_a.create_revision
    assert await a.current_leader() == LeaderInfo("b", "http://b:5050", fence_b.create_revision)
    await b.close()
    assert await a.current_leader() is None


async def test_leader_keeps_its_term_past_the_lease_ttl_by_renewing(store: EtcdStore) -> None:
    a = candidate(store, "a", lease_ttl=1)
    fence = await a.campaign(timeout=5)
    await asyncio.sleep(2.5)
    assert a.is_leader
    assert await store.fenced(fence).commit([Put("tasks", "t1", {})]) == 1
    await a.close()


async def test_leader_learns_at_once_when_its_key_is_deleted(store: EtcdStore) -> None:
    lost: list[str] = []
    a = candidate(store, "a", lease_ttl=10, on_lost=lost.append)
    fence = await a.campaign(timeout=5)
    await store.client.txn([], [delete_op(fence.key)])
    reason = await asyncio.wait_for(a.wait_lost(), 2.0)
    assert reason == "leader key was deleted"
    assert lost == [reason]
    assert not a.is_leader
    with pytest.raises(NotLeader):
        await store.fenced(fence).commit([Put("tasks", "t1", {})])


async def test_leader_steps_down_after_the_renew_deadline_on_its_clock(store: EtcdStore) -> None:
    clock = FakeClock()
    a = candidate(store, "a", lease_ttl=6, clock=clock)  # renews every 2 s, deadline 4 s
    fence = await a.campaign(timeout=5)

    async def unreachable(lease_id: int, *, timeout: float | None = None) -> int:
        raise StoreUnavailable("etcd did not answer")

    store.client.keep_alive = unreachable  # type: ignore[method-assign]
    clock.now += 3.0  # renewals now fail, but the deadline is not reached yet
    await asyncio.sleep(0.5)
    assert a.is_leader
    clock.now += 1.5
    reason = await asyncio.wait_for(a.wait_lost(), 2.0)
    assert reason.startswith("lease not renewed for 4.5s")
    # It then gives the lease back, so nobody waits for etcd to expire it.
    for _ in range(50):
        if await store.client.get(fence.key) is None:
            break
        await asyncio.sleep(0.02)
    assert await store.client.get(fence.key) is None


async def test_paused_leader_cannot_write_once_another_leads(store: EtcdStore) -> None:
    """SIGSTOP simulated in-process: A stops renewing and watching but keeps its fence and
    keeps writing, as a process would in the instant after it resumes."""
    a = candidate(store, "a", lease_ttl=1)
    b = candidate(store, "b", lease_ttl=1)
    fence_a = await a.campaign(timeout=5)
    b_campaign = asyncio.create_task(b.campaign(timeout=10))
    assert a._holder is not None
    a._holder.cancel()  # frozen: no keepalives, no watch, still believes it leads
    zombie = store.fenced(fence_a)
    accepted: list[int] = []
    refused = 0
    i = 0
    while refused < 5:
        i += 1
        try:
            await zombie.commit([Put("writes", f"a{i:04}", {"i": i})])
            accepted.append(i)
        except NotLeader:
            refused += 1
        await asyncio.sleep(0.02)
    fence_b = await b_campaign
    assert a.is_leader  # it never noticed...
    assert accepted  # ...it wrote while its lease lasted...
    written = {kv.key: kv.mod_revision for kv in (await store.client.get_prefix(b"/"))[1]}
    a_writes = {k: rev for k, rev in written.items() if b"/objects/writes/a" in k}
    assert len(a_writes) == len(accepted)
    # ...and not one write of A landed after B's term began.
    assert max(a_writes.values()) < fence_b.create_revision
    assert await store.fenced(fence_b).commit([Put("writes", "b", {})]) == len(accepted) + 1
    await b.close()


async def test_run_campaigns_again_after_losing(store: EtcdStore) -> None:
    elected: list[int] = []
    a = candidate(store, "a", lease_ttl=10, on_elected=lambda f: elected.append(f.create_revision))
    running = asyncio.create_task(a.run())
    while not elected:
        await asyncio.sleep(0.02)
    assert a.fence is not None
    await store.client.txn([], [delete_op(a.fence.key)])
    while len(elected) < 2:
        await asyncio.sleep(0.02)
    assert elected[1] > elected[0]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await store.client.get(a.key) is None  # stopping resigns
