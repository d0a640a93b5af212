"""The HA StateStore: JSON objects in etcd, each batch one transaction, leader writes fenced.

Layout under `prefix` (default `/tessera`):
  <prefix>/objects/<kind>/<key>   one JSON object
  <prefix>/meta/revision          the store revision (a counter; see etcd_commit.py)
  <prefix>/leader/<name>          the leader key of an election (leadership.py)

Commits that arrive while a transaction is in flight are grouped into the next one, like
SQLite's group commit: each batch keeps its own revision and `expect_revision` check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from tessera.store.base import (
    CommitOutcomeUnknown,
    Delete,
    NotLeader,
    Operation,
    Put,
    StoreUnavailable,
)
from tessera.store.etcd_client import (
    EtcdClient,
    EtcdError,
    delete_op,
    mod_revision_is,
    put_op,
    range_op,
)
from tessera.store.etcd_commit import (
    AsyncGroupCommitter,
    Batch,
    Counter,
    LeaderFence,
    operation_size,
    plan_group,
)

# etcd's defaults: --max-txn-ops 128, --max-request-bytes 1.5 MiB.
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
# Rounds of "another writer moved the counter, plan again" before giving up on a group.
_CONFLICT_ROUNDS = 20


class BatchTooLarge(ValueError):
    """A batch needs more operations in one transaction than etcd is configured to take."""


class EtcdStore:
    def __init__(
        self,
        endpoints: Sequence[str] | EtcdClient,
        prefix: str = "/tessera",
        *,
        timeout: float = 5.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.client = (
            endpoints
            if isinstance(endpoints, EtcdClient)
            else EtcdClient(endpoints, timeout=timeout)
        )
        self.prefix = prefix.rstrip("/")
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self._counter_key = f"{self.prefix}/meta/revision".encode()
        self._counter: Counter | None = None  # a guess; every transaction checks it
        self._group: AsyncGroupCommitter[Batch, int] = AsyncGroupCommitter(self._flush)

    def leader_key(self, name: str) -> bytes:
        return f"{self.prefix}/leader/{name}".encode()

    def fenced(self, fence: LeaderFence) -> FencedStore:
        """A StateStore whose every commit carries `fence` (for the leader's code paths)."""
        return FencedStore(self, fence)

    # ---- reads -------------------------------------------------------------------------

    def _kind_prefix(self, kind: str) -> bytes:
        if not kind or "/" in kind:
            raise ValueError(f"invalid kind {kind!r}")
        return f"{self.prefix}/objects/{kind}/".encode()

    def _object_key(self, kind: str, key: str) -> bytes:
        if not key:
            raise ValueError("empty key")
        return self._kind_prefix(kind) + key.encode()

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        prefix = self._kind_prefix(kind)
        _, found = await self.client.get_prefix(prefix)
        return {kv.key[len(prefix) :].decode(): json.loads(kv.value) for kv in found}

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        kv = await self.client.get(self._object_key(kind, key))
        return None if kv is None else dict(json.loads(kv.value))

    async def revision(self) -> int:
        counter = await self._read_counter()
        return counter.revision

    async def _read_counter(self) -> Counter:
        counter = Counter.parse(await self.client.get(self._counter_key))
        self._counter = counter
        return counter

    # ---- writes ------------------------------------------------------------------------

    async def commit(
        self,
        operations: Sequence[Operation],
        *,
        expect_revision: int | None = None,
        fence: LeaderFence | None = None,
    ) -> int:
        """Apply all of `operations` or none; with `fence`, only while that leadership holds
        (else `NotLeader`). Returns the new store revision."""
        for op in operations:
            self._object_key(op.kind, op.key)  # reject bad names before anything is sent
        if len(operations) + 1 > self.max_txn_ops:
            raise BatchTooLarge(
                f"a batch of {len(operations)} operations needs etcd's --max-txn-ops above "
                f"{len(operations)} and a store with max_txn_ops to match "
                f"(now {self.max_txn_ops})"
            )
        return await self._group.submit(Batch(list(operations), expect_revision, fence))

    async def _flush(self, batches: list[Batch]) -> list[int | BaseException]:
        outcomes: list[int | BaseException] = []
        for group in self._groups(batches):
            try:
                outcomes.extend(await self._commit_group(group))
            except Exception as error:
                outcomes.extend([error] * len(group))
        return outcomes

    def _groups(self, batches: list[Batch]) -> list[list[Batch]]:
        """Consecutive batches under the same fence that fit one transaction together."""
        groups: list[list[Batch]] = []
        ops = size = 0
        for batch in batches:
            batch_ops = len(batch.operations)
            batch_size = sum(operation_size(op) for op in batch.operations)
            if (
                not groups
                or groups[-1][0].fence != batch.fence
                or ops + batch_ops + 1 > self.max_txn_ops
                or size + batch_size > self.max_request_bytes * 0.8
            ):
                groups.append([])
                ops = size = 0
            groups[-1].append(batch)
            ops += batch_ops
            size += batch_size
        return groups

    async def _commit_group(self, batches: list[Batch]) -> list[int | BaseException]:
        fence = batches[0].fence
        token = uuid.uuid4().hex
        for _ in range(_CONFLICT_ROUNDS):
            base = self._counter or await self._read_counter()
            plan = plan_group(batches, base.revision)
            compare = [mod_revision_is(self._counter_key, base.mod_revision)]
            failure = [range_op(self._counter_key)]
            if fence is not None:
                compare.append(fence.compare())
                failure.append(range_op(fence.key))
            success = [self._request(op) for op in plan.writes.values()]
            if success:
                after = Counter(plan.revision, 0, token)
                success.append(put_op(self._counter_key, after.encode()))
            try:
                result = await self.client.txn(compare, success, failure)
            except StoreUnavailable as error:
                if await self._applied_despite(error, token, base):
                    return plan.outcomes
                continue
            except EtcdError as error:
                if "too many operations" in error.details or "too large" in error.details:
                    raise BatchTooLarge(f"{error.details}: raise etcd's limits") from error
                raise
            if result.succeeded:
                if success:
                    self._counter = Counter(plan.revision, result.revision, token)
                return plan.outcomes
            current = Counter.parse(result.ranges[0][0] if result.ranges[0] else None)
            self._counter = current
            if current.token == token:  # an earlier try whose answer was lost did apply
                return plan.outcomes
            if fence is not None and not fence.holds(next(iter(result.ranges[1]), None)):
                refused = NotLeader(
                    f"leadership {fence.key.decode()}@{fence.create_revision} is no longer held"
                )
                return [refused] * len(batches)
        raise StoreUnavailable(f"gave up after {_CONFLICT_ROUNDS} rounds of conflicting writers")

    async def _applied_despite(self, error: StoreUnavailable, token: str, base: Counter) -> bool:
        """The transaction's answer was lost: find out whether it applied. True if it did;
        False if it certainly did not (the caller retries); CommitOutcomeUnknown if the
        counter moved on, so another writer's commit may hide ours."""
        try:
            current = await self._read_counter()
        except StoreUnavailable as again:
            raise CommitOutcomeUnknown(f"{error}; and then: {again}") from again
        if current.token == token:
            return True
        if current.mod_revision == base.mod_revision:
            return False
        raise CommitOutcomeUnknown(f"{error}; the store moved on meanwhile") from error

    def _request(self, op: Operation) -> Any:
        key = self._object_key(op.kind, op.key)
        if isinstance(op, Put):
            return put_op(key, json.dumps(op.value, separators=(",", ":")).encode())
        assert isinstance(op, Delete)
        return delete_op(key)

    async def close(self) -> None:
        await self._group.close()
        await self.client.close()


class FencedStore:
    """The StateStore of a leader: reads as EtcdStore, every commit fenced by its term.

    Closing it closes nothing: the EtcdStore belongs to whoever opened it."""

    def __init__(self, store: EtcdStore, fence: LeaderFence) -> None:
        self.store = store
        self.fence = fence

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self.store.load(kind)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return await self.store.get(kind, key)

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int:
        return await self.store.commit(
            operations, expect_revision=expect_revision, fence=self.fence
        )

    async def revision(self) -> int:
        return await self.store.revision()

    async def close(self) -> None:
        return None
