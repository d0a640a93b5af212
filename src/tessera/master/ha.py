"""Several masters on etcd: the election seat of one master and the store it writes through.

Every master campaigns for one leader key (store/leadership.py). While another leads, this
master runs none of its controllers and forwards API requests (leader_proxy.py). When it
wins, it loads the cluster from the store as a restart does and writes only through a
`TermStore` carrying its fence, so etcd refuses its writes once the term is over, noticed
or not. When the term ends it stops everything and the process exits, for its supervisor
to start it again as a follower: no in-memory state can outlive a term (Mesos does the
same).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from tessera.master.config import MasterConfig
from tessera.store.base import NotLeader, Operation
from tessera.store.etcd import EtcdStore, FencedStore
from tessera.store.etcd_commit import LeaderFence
from tessera.store.leadership import LeaderInfo, Leadership


class TermStore:
    """The master's StateStore under etcd. Reads go to etcd; a commit carries the fence of
    the term this master holds, and fails with `NotLeader` while it holds none. A refusal
    by etcd (the term ended before this master noticed) is reported to `on_not_leader`
    before it is raised, so the master steps down at once."""

    def __init__(self, store: EtcdStore, on_not_leader: Callable[[str], None]) -> None:
        self.store = store
        self.on_not_leader = on_not_leader
        self._term: FencedStore | None = None

    def begin(self, fence: LeaderFence) -> None:
        self._term = self.store.fenced(fence)

    def end(self) -> None:
        self._term = None

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self.store.load(kind)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return await self.store.get(kind, key)

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int:
        term = self._term
        if term is None:
            raise NotLeader("this master does not lead")
        try:
            return await term.commit(operations, expect_revision=expect_revision)
        except NotLeader as error:
            self.on_not_leader(f"a write was refused: {error}")
            raise

    async def revision(self) -> int:
        return await self.store.revision()

    async def close(self) -> None:
        await self.store.close()


def leadership_for(
    store: EtcdStore,
    config: MasterConfig,
    url: str,
    on_elected: Callable[[LeaderFence], None],
    on_lost: Callable[[str], None],
) -> Leadership:
    # Stable across restarts of the same master, so its log lines and /v1/leader read well.
    candidate_id = f"{socket.gethostname()}:{config.port}"
    return Leadership(
        store,
        "master",
        config.leader_lease,
        candidate_id=candidate_id,
        url=url,
        on_elected=on_elected,
        on_lost=on_lost,
    )


def leader_address(leader: LeaderInfo) -> str:
    """host:port, as Marathon's /v2/leader names a leader."""
    return urlsplit(leader.url).netloc or leader.id
