"""How EtcdStore commits: group commit, the revision counter and the leader fence.

The store revision is a counter kept in one key, not etcd's own revision (which every
write under any prefix, lease-bound leader keys included, moves). Every transaction
compares that key's mod revision with the one it was planned against, so batches from
any number of writers apply in one order, each with its own number.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tessera.store.base import Operation, Put, StaleRevision
from tessera.store.etcd_client import KeyValue, create_revision_is

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class LeaderFence:
    """Proof of one term of leadership: the leader key as this candidate created it.

    A fenced transaction applies only while that key still exists with this create
    revision; it is deleted when the lease expires or is revoked, and a later leader's key
    has a later create revision. So a leader that was paused, partitioned or slow to notice
    its loss cannot write, whatever it believes."""

    key: bytes
    create_revision: int
    lease_id: int

    def compare(self) -> Any:
        return create_revision_is(self.key, self.create_revision)

    def holds(self, leader: KeyValue | None) -> bool:
        return leader is not None and leader.create_revision == self.create_revision


@dataclass(frozen=True, slots=True)
class Counter:
    """The store revision as last read or written: its value, the etcd mod revision of the
    counter key (0 while absent) and the token of the transaction that wrote it."""

    revision: int
    mod_revision: int
    token: str

    @staticmethod
    def parse(kv: KeyValue | None) -> Counter:
        if kv is None:
            return Counter(0, 0, "")
        data = json.loads(kv.value)
        return Counter(int(data["revision"]), kv.mod_revision, str(data.get("token", "")))

    def encode(self) -> bytes:
        return json.dumps({"revision": self.revision, "token": self.token}).encode()


@dataclass(frozen=True, slots=True)
class Batch:
    operations: Sequence[Operation]
    expect_revision: int | None
    fence: LeaderFence | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one transaction writes for a group of batches, checked against `base`."""

    outcomes: list[int | BaseException]
    writes: dict[tuple[str, str], Operation]  # the last operation on each object wins
    revision: int  # the store revision after it


def plan_group(batches: Sequence[Batch], base: int) -> Plan:
    """Each batch keeps its own revision and its own `expect_revision` check, as if it had
    been committed alone in this order."""
    outcomes: list[int | BaseException] = []
    writes: dict[tuple[str, str], Operation] = {}
    revision = base
    for batch in batches:
        if batch.expect_revision is not None and batch.expect_revision != revision:
            outcomes.append(StaleRevision(batch.expect_revision, revision))
            continue
        revision += 1
        outcomes.append(revision)
        for op in batch.operations:
            writes[(op.kind, op.key)] = op
    return Plan(outcomes, writes, revision)


def operation_size(op: Operation) -> int:
    """Roughly the bytes an operation adds to a transaction request."""
    value = len(json.dumps(op.value)) if isinstance(op, Put) else 0
    return len(op.kind) + len(op.key) + value + 64


class AsyncGroupCommitter(Generic[Item, Result]):
    """GroupCommitter (store/group_commit.py) for a flush that is a network round trip on the
    event loop rather than blocking work for a thread: items that arrive while one flush is
    in flight share the next, and flushes never overlap."""

    def __init__(
        self,
        # Returns, for each item, its result or the exception that item alone raised.
        flush: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
    ) -> None:
        self._flush = flush
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._flush([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in [*batch, *self._pending]:
                    future.cancel()
                raise
            except Exception as error:  # the whole flush failed: so did every item
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
