"""Two in-process masters on a real etcd node: one leads and writes, the other follows and
cannot write; a leader whose term ended under it steps down on its first refused write."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tessera.master.config import MasterConfig
from tessera.master.core import Master
from tessera.master.ha import TermStore
from tessera.master.state import TASKS
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.store import NotLeader, Put
from tessera.store.etcd_client import delete_op
from tessera.store.etcd_commit import LeaderFence
from tessera.store.etcd_url import open_etcd_store
from tessera.testing.etcd import MISSING_REASON, EtcdCluster, etcd_binary

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(MISSING_REASON)
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as cluster:
        yield cluster


@pytest.fixture
async def pair(etcd: EtcdCluster, tmp_path: Path) -> AsyncIterator[tuple[Master, Master]]:
    store = f"etcd://{etcd.endpoints[0]}/ha{next(_prefixes)}"
    masters = []
    # Both open the cluster's keys in etcd with one cluster key, as operators set them up.
    cluster_key = tmp_path / "cluster-key"
    cluster_key.write_text(secrets.token_bytes(32).hex())
    for name, port in (("a", 5051), ("b", 5052)):
        config = MasterConfig(
            work_dir=tmp_path / name,
            port=port,
            store=store,
            leader_lease=2,
            advertise_url=f"http://{name}:{port}",
            cluster_key_file=cluster_key,
        )
        masters.append(Master(config))
    first, second = masters
    await first.start()
    await until(lambda: first.leading)
    await second.start()
    await until(lambda: second.leader_url() == "http://a:5051")
    yield first, second
    await second.stop()
    await first.stop()


async def until(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_the_leader_writes_and_the_follower_cannot(pair: tuple[Master, Master]) -> None:
    leader, follower = pair
    assert leader.leader_url() is None
    view = follower.leader()
    assert view is not None and view.url == "http://a:5051" and not view.is_self
    own = leader.leader()
    assert own is not None and own.is_self and own.address == "a:5051" and own.term > 0

    task = await leader.submit("t1", TaskSpec(name="t", cmd="true"))
    assert (await follower.store.get(TASKS, task.id)) is not None  # it reads the store
    with pytest.raises(NotLeader):
        await follower.store.commit([Put(TASKS, "t2", {})])
    assert follower.lost_reason is None  # never led: nothing to step down from


async def test_a_refused_write_ends_the_term_and_the_follower_takes_over(
    pair: tuple[Master, Master],
) -> None:
    leader, follower = pair
    ended: list[str] = []
    leader.on_term_end = ended.append
    assert leader.leadership is not None and leader.leadership.fence is not None
    etcd_store = leader.leadership.client
    # The leader key vanishes as when the lease runs out while the leader is paused.
    await etcd_store.txn([], [delete_op(leader.leadership.fence.key)])
    with pytest.raises(NotLeader):
        await leader.store.commit([Put(TASKS, "late", {})])
    assert not leader.leading and leader.lost_reason is not None
    await until(lambda: ended != [])  # whichever noticed first: the write or the watch
    await until(lambda: follower.leading)
    assert (await follower.store.get(TASKS, "late")) is None
    # A master leads at most once per process: its supervisor starts it afresh.
    assert leader.leader_url() in ("", "http://b:5052")
    await follower.submit("after", TaskSpec(name="t", cmd="true"))


async def test_a_write_refused_by_etcd_reports_the_lost_term(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    etcd_store = open_etcd_store(f"etcd://{etcd.endpoints[0]}/ha{next(_prefixes)}")
    lost: list[str] = []
    store = TermStore(etcd_store, lost.append)
    with pytest.raises(NotLeader):  # no term yet: refused before reaching etcd
        await store.commit([Put(TASKS, "t", {})])
    assert lost == []
    # A term whose leader key no longer exists (its lease ran out).
    store.begin(LeaderFence(etcd_store.leader_key("master"), 1, 0))
    with pytest.raises(NotLeader):
        await store.commit([Put(TASKS, "t", {})])
    assert len(lost) == 1 and "refused" in lost[0]
    assert await store.load(TASKS) == {}
    await store.close()


async def test_a_change_larger_than_one_etcd_transaction_is_committed_in_parts(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    store = f"etcd://{etcd.endpoints[0]}/ha{next(_prefixes)}?max_txn_ops=8"
    master = Master(MasterConfig(work_dir=tmp_path, store=store, leader_lease=2))
    await master.start()
    try:
        await until(lambda: master.leading)
        now = master.clock.wall()
        tasks = [
            Task(f"t{i}", TaskSpec(name="t", cmd="true"), TaskState.TASK_QUEUED, now, now)
            for i in range(20)
        ]
        await master.state.save(tasks=tasks)  # 20 operations, 7 per transaction
        assert len(await master.store.load(TASKS)) == 20
    finally:
        await master.stop()
