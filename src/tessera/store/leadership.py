"""Leader election on etcd, with a fence for every write of the leader.

A candidate leads while one key, `<prefix>/leader/<name>`, exists as it created it: created
only if absent, bound to the candidate's lease, holding its id and URL (so followers know
where to forward). The leader renews the lease and watches the key; it gives up by itself
when it could not renew for `renew_deadline`, before etcd expires the lease at `lease_ttl`.

Knowing is not enough to be safe: a paused or partitioned leader may act on a belief that
is already false (Jepsen's finding on etcd's lock API). So the election hands out a
`LeaderFence`, and `EtcdStore.commit(..., fence=...)` applies a batch only in the same
transaction that checks the key still exists with that create revision.

Timeouts (cf. client-go's lease duration 15 s, renew deadline 10 s, retry period 2 s):
  lease_ttl       seconds etcd keeps the key after the last renewal; how long a dead
                  leader blocks the next one
  renew_interval  how often the leader renews (default lease_ttl / 3)
  renew_deadline  the leader steps down after this long without a renewal
                  (default 2/3 of lease_ttl, so it stops before anyone else can start)
  retry_period    how long a follower waits on a watch before re-reading the key, and
                  the back-off after etcd errors
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tessera.clock import Clock, SystemClock
from tessera.store.base import StoreUnavailable
from tessera.store.etcd import EtcdStore
from tessera.store.etcd_client import (
    EtcdClient,
    EtcdError,
    KeyValue,
    create_revision_is,
    put_op,
    range_op,
)
from tessera.store.etcd_commit import LeaderFence

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    id: str
    url: str
    # Grows with every new term: the create revision of the leader key.
    term: int

    @staticmethod
    def parse(kv: KeyValue) -> LeaderInfo:
        try:
            data = json.loads(kv.value)
            return LeaderInfo(str(data["id"]), str(data.get("url", "")), kv.create_revision)
        except (ValueError, KeyError, TypeError):
            return LeaderInfo(kv.value.decode(errors="replace"), "", kv.create_revision)


class Leadership:
    def __init__(
        self,
        store_or_client: EtcdStore | EtcdClient,
        name: str = "master",
        lease_ttl: int = 5,
        *,
        candidate_id: str | None = None,
        url: str = "",
        prefix: str | None = None,
        clock: Clock | None = None,
        renew_interval: float | None = None,
        renew_deadline: float | None = None,
        retry_period: float = 1.0,
        on_elected: Callable[[LeaderFence], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_leader: Callable[[LeaderInfo | None], None] | None = None,
    ) -> None:
        if isinstance(store_or_client, EtcdStore):
            self.client = store_or_client.client
            prefix = store_or_client.prefix if prefix is None else prefix
        else:
            self.client = store_or_client
        self.key = f"{(prefix or '/tessera').rstrip('/')}/leader/{name}".encode()
        self.id = candidate_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.url = url
        self.lease_ttl = max(1, int(lease_ttl))
        self.renew_interval = renew_interval or self.lease_ttl / 3
        self.renew_deadline = renew_deadline or self.lease_ttl * 2 / 3
        if not self.renew_interval < self.renew_deadline < self.lease_ttl:
            raise ValueError("need renew_interval < renew_deadline < lease_ttl")
        self.retry_period = retry_period
        self.clock = clock or SystemClock()
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._on_leader = on_leader
        self.fence: LeaderFence | None = None
        self.leader: LeaderInfo | None = None  # as last observed
        self.lost_reason = ""
        self._lost = asyncio.Event()
        self._holder: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.fence is not None

    # ---- following and campaigning -----------------------------------------------------

    async def current_leader(self) -> LeaderInfo | None:
        """Read who leads now (a linearizable read), for followers to forward to."""
        _, kv = await self.client.get_at(self.key)
        return self._observe(kv)

    def _observe(self, kv: KeyValue | None) -> LeaderInfo | None:
        return self._set_leader(None if kv is None else LeaderInfo.parse(kv))

    def _set_leader(self, leader: LeaderInfo | None) -> LeaderInfo | None:
        if leader != self.leader:
            self.leader = leader
            if self._on_leader is not None:
                self._on_leader(leader)
        return leader

    async def campaign(self, timeout: float | None = None) -> LeaderFence:
        """Return once this candidate leads (at once if it already does); `TimeoutError` if
        that takes longer than `timeout` seconds on the clock."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while self.fence is None:
            wait = self.retry_period
            if deadline is not None:
                wait = min(wait, deadline - self.clock.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"{self.id} did not become leader within {timeout}s")
            try:
                revision, kv = await self.client.get_at(self.key)
                if kv is None:
                    if await self._try_acquire():
                        break
                    continue  # someone else was quicker: read who
                self._observe(kv)
                # Wake when the key changes (the leader resigned or its lease ran out).
                await self.client.next_event(self.key, revision, wait)
            except (StoreUnavailable, EtcdError) as error:
                log.warning("election %s: %s", self.key.decode(), error)
                await asyncio.sleep(wait)
        assert self.fence is not None
        return self.fence

    async def _try_acquire(self) -> bool:
        value = json.dumps({"id": self.id, "url": self.url}).encode()
        granted_at = self.clock.monotonic()  # before the grant: the lease ends no earlier
        lease = await self.client.grant_lease(self.lease_ttl)
        try:
            result = await self.client.txn(
                [create_revision_is(self.key, 0)],
                [put_op(self.key, value, lease)],
                [range_op(self.key)],
            )
        except StoreUnavailable:
            # The answer was lost, not necessarily the write: is the key ours?
            _, kv = await self.client.get_at(self.key)
            if kv is not None and kv.lease == lease:
                self._begin_term(LeaderFence(self.key, kv.create_revision, lease), granted_at)
                return True
            await self._revoke(lease)
            raise
        if result.succeeded:
            self._begin_term(LeaderFence(self.key, result.revision, lease), granted_at)
            return True
        await self._revoke(lease)
        self._observe(next(iter(result.ranges[0]), None))
        return False

    # ---- leading -----------------------------------------------------------------------

    def _begin_term(self, fence: LeaderFence, renewed_at: float) -> None:
        self.fence = fence
        self.lost_reason = ""
        self._lost.clear()
        log.info("%s leads %s (term %d)", self.id, self.key.decode(), fence.create_revision)
        self._set_leader(LeaderInfo(self.id, self.url, fence.create_revision))
        self._holder = asyncio.get_running_loop().create_task(
            self._hold(fence, renewed_at), name=f"leadership {self.id}"
        )
        if self._on_elected is not None:
            self._on_elected(fence)

    async def _hold(self, fence: LeaderFence, renewed_at: float) -> None:
        """Renew the lease and watch the key until either fails; then end the term."""
        watched_to = fence.create_revision
        try:
            while True:
                now = self.clock.monotonic()
                if now - renewed_at >= self.renew_deadline:
                    reason = f"lease not renewed for {now - renewed_at:.1f}s"
                    break
                wait = max(0.0, renewed_at + self.renew_interval - now)
                if wait > 0:
                    change = await self._next_change(fence, watched_to, wait)
                    if change:
                        reason = change
                        break
                if self.clock.monotonic() - renewed_at < self.renew_interval:
                    continue
                sent_at = self.clock.monotonic()
                outcome = await self._renew(fence, renewed_at)
                if isinstance(outcome, str):
                    reason = outcome
                    break
                if outcome is None:  # etcd did not answer: back off, then try again
                    left = renewed_at + self.renew_deadline - self.clock.monotonic()
                    await asyncio.sleep(max(0.01, min(self.retry_period, left)))
                else:
                    renewed_at, watched_to = sent_at, outcome
        except Exception as error:  # never leave a term open on a bug
            log.exception("leadership loop failed")
            reason = f"leadership loop failed: {error}"
        self._end_term(fence, reason)
        await self._revoke(fence.lease_id)

    async def _next_change(self, fence: LeaderFence, after: int, wait: float) -> str:
        """Wait up to `wait` for the key to change; why that ends the term, or ''."""
        try:
            async with asyncio.timeout(wait + self.renew_interval):
                event = await self.client.next_event(self.key, after, wait)
        except (StoreUnavailable, TimeoutError):
            await asyncio.sleep(min(wait, self.retry_period))  # renewal decides
            return ""
        if event is None or event.kv.create_revision == fence.create_revision:
            return ""
        return "leader key was deleted" if event.deleted else "leader key was replaced"

    async def _renew(self, fence: LeaderFence, renewed_at: float) -> int | str | None:
        """Renew once: etcd's revision at which the key was still ours; why the term is
        over; or None when etcd did not answer in time (try again until the deadline)."""
        left = renewed_at + self.renew_deadline - self.clock.monotonic()
        try:
            async with asyncio.timeout(max(left, 0.01)):
                ttl = await self.client.keep_alive(fence.lease_id, timeout=self.renew_interval)
                if ttl <= 0:
                    return "lease expired"
                revision, kv = await self.client.get_at(self.key, timeout=self.renew_interval)
        except (StoreUnavailable, TimeoutError) as error:
            log.warning("%s could not renew its lease: %s", self.id, error)
            return None
        if not fence.holds(kv):
            return "leader key was deleted or replaced"
        return revision

    def _end_term(self, fence: LeaderFence, reason: str) -> None:
        """Stop acting as leader; the caller then gives the lease back (the fence already
        refuses this term's writes, the revocation only spares the next leader a wait)."""
        if self.fence is not fence:
            return
        self.fence = None
        self.lost_reason = reason
        self._lost.set()
        log.warning("%s no longer leads %s: %s", self.id, self.key.decode(), reason)
        if self._on_lost is not None:
            self._on_lost(reason)
        self._set_leader(None)  # unknown until read again

    async def _revoke(self, lease_id: int) -> None:
        """Best effort: revoking deletes the key, so the next leader need not wait out the
        lease."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.renew_interval):
                await self.client.revoke_lease(lease_id)

    async def wait_lost(self) -> str:
        """Block until the current term ends; why it ended."""
        await self._lost.wait()
        return self.lost_reason

    async def resign(self) -> None:
        """Give up leadership now (the lease is revoked, so a follower takes over at once)."""
        fence, holder = self.fence, self._holder
        # Library code under the loop may swallow one cancellation: insist until it ends.
        while holder is not None and not holder.done():
            holder.cancel()
            await asyncio.wait([holder], timeout=1.0)
        if fence is not None:
            self._end_term(fence, "resigned")
            await self._revoke(fence.lease_id)

    async def run(self) -> None:
        """Campaign, lead until the term ends, campaign again; until cancelled."""
        try:
            while True:
                await self.campaign()
                await self.wait_lost()
                await asyncio.sleep(self.retry_period)
        finally:
            await self.resign()

    async def close(self) -> None:
        await self.resign()
