"""The etcd store and election against real etcd processes: a three-member cluster losing a
member and then its quorum, and a leader process paused with SIGSTOP past its lease."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.store import Put, StoreUnavailable
from tessera.store.etcd import EtcdStore
from tessera.store.leadership import Leadership
from tessera.testing.cluster import wait_for
from tessera.testing.etcd import MISSING_REASON, EtcdCluster, EtcdMember, etcd_binary

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=MISSING_REASON)

CANDIDATE = Path(__file__).with_name("etcd_candidate.py")


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        yield cluster


def member_at(cluster: EtcdCluster, endpoint: str) -> EtcdMember:
    return next(m for m in cluster.members if m.endpoint == endpoint)


async def test_store_and_leader_carry_on_when_their_etcd_member_dies(etcd3: EtcdCluster) -> None:
    store = EtcdStore(etcd3.endpoints, timeout=1.0)
    leadership = Leadership(store, "master", 4, candidate_id="a", url="http://a:5050")
    fence = await leadership.campaign(timeout=10)
    writer = store.fenced(fence)
    for i in range(10):
        await writer.commit([Put("tasks", f"t{i}", {"i": i})])
    used = member_at(etcd3, store.client.current_endpoint)
    used.kill()
    for i in range(10, 20):
        await writer.commit([Put("tasks", f"t{i}", {"i": i})])
    assert store.client.current_endpoint != used.endpoint
    await asyncio.sleep(5)  # longer than the lease: renewals went to another member
    assert leadership.is_leader
    assert await writer.commit([Put("tasks", "last", {})]) == 21
    assert len(await store.load("tasks")) == 21
    await leadership.close()
    await store.close()


async def test_without_quorum_writes_fail_fast_and_nothing_acknowledged_is_lost(
    etcd3: EtcdCluster,
) -> None:
    store = EtcdStore(etcd3.endpoints, timeout=0.5)
    acknowledged = [await store.commit([Put("tasks", f"t{i}", {})]) for i in range(5)]
    assert acknowledged == [1, 2, 3, 4, 5]
    killed = etcd3.members[:2]
    for member in killed:
        member.kill()
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailable):
        await store.commit([Put("tasks", "during", {})])
    with pytest.raises(StoreUnavailable):
        await store.load("tasks")
    assert asyncio.get_running_loop().time() - started < 10
    for member in killed:
        member.start()
    for member in killed:
        etcd3.wait_healthy(member)
    tasks = await store.load("tasks")
    assert {f"t{i}" for i in range(5)} <= set(tasks)
    revision = await store.revision()
    assert revision in (5, 6)  # the write during the outage may or may not have landed
    assert await store.commit([Put("tasks", "after", {})]) == revision + 1
    await store.close()


async def test_leader_paused_past_its_lease_gets_no_write_accepted(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    log_path = tmp_path / "candidate-a.log"
    with open(log_path, "wb") as log:
        old_leader = subprocess.Popen(
            [sys.executable, str(CANDIDATE), ",".join(etcd3.endpoints), "/sigstop"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: "ok 10 " in log_path.read_text(), 20, "the old leader to write")
        os.kill(old_leader.pid, signal.SIGSTOP)
        store = EtcdStore(etcd3.endpoints, prefix="/sigstop", timeout=1.0)
        successor = Leadership(store, "master", 1, candidate_id="b", url="http://b:5050")
        fence_b = await successor.campaign(timeout=15)
        await store.fenced(fence_b).commit([Put("writes", "b", {})])
        os.kill(old_leader.pid, signal.SIGCONT)
        assert old_leader.wait(15) == 0, log_path.read_text()[-4000:]
    finally:
        old_leader.kill()
        old_leader.wait(5)
    outcomes = (
        "elected",
        "ok",
        "refused",
        "unknown",
        "leader",
        "follower",
    )  # (the rest is its log)
    lines = [line.split() for line in log_path.read_text().splitlines()]
    lines = [line for line in lines if line and line[0] in outcomes]
    acknowledged = {f"a{int(line[1]):05}" for line in lines if line[0] == "ok"}
    assert sum(1 for line in lines if line[0] == "refused") == 3
    assert lines[-1] == ["follower"]  # after resuming, it learnt that it had lost
    _, stored = await store.client.get_prefix(b"/sigstop/objects/writes/")
    by_name = {kv.key.decode().rsplit("/", 1)[1]: kv.mod_revision for kv in stored}
    from_a = {name: revision for name, revision in by_name.items() if name.startswith("a")}
    assert acknowledged <= set(from_a)  # every acknowledged write is durable
    late = [name for name, revision in from_a.items() if revision > fence_b.create_revision]
    assert late == []  # 0 writes accepted from the old leader after the new term began
    await successor.close()
    await store.close()
