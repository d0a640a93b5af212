"""A multi-endpoint etcd client: one aetcd connection at a time, the next member when it fails.

Timeouts use `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can swallow a
cancellation that arrives as the awaited call completes, and a leader that cannot be
stopped is worse than a slow one.

Every call has a timeout. A call that fails because the member is down, paused, partitioned
or without a raft leader is retried on the next endpoint (reads and lease calls); callers of
`txn` choose whether that is safe, since a write that timed out may still have been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import aetcd.rpc as rpc
import aetcd.utils
import grpc

from tessera.store.base import StoreUnavailable

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# After these another member may well answer: this one is down, paused, cut off from its
# peers ("no leader", "request timed out") or the call ran out of time.
_FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
_RANGE_PAGE = 1000


class EtcdError(Exception):
    """etcd refused a request for a reason another member would give too."""

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        super().__init__(f"etcd: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # etcd's revision after the transaction (or at which it was evaluated)
    # For each range request in the branch that ran: the key-values it found.
    ranges: list[list[KeyValue]]


@dataclass(frozen=True, slots=True)
class KeyEvent:
    deleted: bool
    kv: KeyValue


def parse_endpoints(endpoints: Sequence[str]) -> list[tuple[str, int]]:
    """`h1:2379`, `http://h1:2379` or `h1` (port 2379)."""
    parsed = []
    for endpoint in endpoints:
        address = endpoint.strip().removeprefix("http://").rstrip("/")
        if not address:
            continue
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "2379")
        parsed.append((host or "127.0.0.1", int(port)))
    if not parsed:
        raise ValueError("etcd needs at least one endpoint, e.g. etcd://127.0.0.1:2379")
    return parsed


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def range_op(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def create_revision_is(key: bytes, revision: int) -> Any:
    """True when `key` exists with that create revision; `revision=0`: the key is absent."""
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=revision
    )


def mod_revision_is(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(bytes(kv.key), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.lease)


def _status(error: BaseException) -> tuple[grpc.StatusCode | None, str]:
    cause = error if isinstance(error, rpc.AioRpcError) else error.__cause__
    if isinstance(cause, rpc.AioRpcError):
        return cause.code(), str(cause.details())
    return None, str(error) or type(error).__name__


def _is_endpoint_failure(error: BaseException) -> bool:
    if isinstance(error, TimeoutError | OSError):
        return True
    if isinstance(error, rpc.AioRpcError | aetcd.ClientError):
        code, _ = _status(error)
        return code is None or code in _FAILOVER_CODES
    return False


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._index = 0
        self._client: Any = None
        self._retired: dict[asyncio.Task[None], Any] = {}  # closing soon -> its client

    def describe(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    @property
    def current_endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"{host}:{port}"

    def _connection(self) -> Any:
        if self._client is None:
            host, port = self.endpoints[self._index]
            self._client = aetcd.Client(host, port, timeout=self.timeout)
        return self._client

    async def _failover(self, failed: Any, error: BaseException) -> None:
        if self._client is not failed:
            return  # another call already moved on
        log.warning("etcd %s failed (%s); trying the next endpoint", self.current_endpoint, error)
        self._client = None
        self._index = (self._index + 1) % len(self.endpoints)
        # Closing a channel cancels the calls still on it; let them end on their own first.
        closing = asyncio.get_running_loop().create_task(self._close_later(failed))
        self._retired[closing] = failed
        closing.add_done_callback(lambda done: self._retired.pop(done, None))

    async def _close_later(self, client: Any, delay: float | None = None) -> None:
        await asyncio.sleep(self.timeout if delay is None else delay)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await client.close()

    async def call(
        self,
        operation: Callable[[Any], Awaitable[_T]],
        *,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> _T:
        """Run `operation(client)` on the current member, the next one if that one fails.

        `attempts=1` for calls that must not be repeated blindly (writes)."""
        limit = self.timeout if timeout is None else timeout
        last: BaseException | None = None
        for _ in range(attempts or len(self.endpoints)):
            client = self._connection()
            try:
                await client.connect()
                async with asyncio.timeout(limit):
                    return await operation(client)
            except asyncio.CancelledError as error:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                last = error  # gRPC cancels calls on a channel that another call closed
            except Exception as error:
                if not _is_endpoint_failure(error):
                    code, details = _status(error)
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # e.g. its space quota
                        raise StoreUnavailable(f"etcd refuses writes: {details}") from error
                    raise EtcdError(code, details) from error
                last = error
                await self._failover(client, error)
        raise StoreUnavailable(
            f"etcd did not answer at {self.describe()}: {_status(last)[1] if last else '?'}"
        ) from last

    async def close(self) -> None:
        clients = [self._client, *self._retired.values()]
        for closing in list(self._retired):
            closing.cancel()
        self._client = None
        for client in clients:
            if client is not None:
                await self._close_later(client, delay=0)

    # ---- key-value ---------------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> KeyValue | None:
        _, found = await self.get_at(key, timeout=timeout)
        return found

    async def get_at(
        self, key: bytes, *, timeout: float | None = None
    ) -> tuple[int, KeyValue | None]:
        """The key (None if absent) and etcd's revision at which it was read."""

        async def read(client: Any) -> tuple[int, KeyValue | None]:
            response = await client.kvstub.Range(
                rpc.RangeRequest(key=key), timeout=timeout or self.timeout
            )
            found = _key_value(response.kvs[0]) if response.kvs else None
            return int(response.header.revision), found

        return await self.call(read, timeout=timeout)

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, read in pages at one revision (a consistent snapshot)."""
        end = aetcd.utils.prefix_range_end(prefix)
        found: list[KeyValue] = []
        revision = 0
        start = prefix
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=_RANGE_PAGE, revision=revision
            )

            async def read(client: Any, request: Any = request) -> Any:
                return await client.kvstub.Range(request, timeout=self.timeout)

            response = await self.call(read)
            revision = revision or response.header.revision
            found.extend(_key_value(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return revision, found
            start = bytes(response.kvs[-1].key) + b"\0"

    async def txn(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        *,
        attempts: int | None = 1,
    ) -> TxnResult:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)

        async def run(client: Any) -> Any:
            return await client.kvstub.Txn(request, timeout=self.timeout)

        response = await self.call(run, attempts=attempts)
        ranges = [
            [_key_value(kv) for kv in op.response_range.kvs]
            for op in response.responses
            if op.WhichOneof("response") == "response_range"
        ]
        return TxnResult(bool(response.succeeded), response.header.revision, ranges)

    # ---- leases ------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        async def grant(client: Any) -> int:
            response = await client.leasestub.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl, ID=0), timeout=self.timeout
            )
            return int(response.ID)

        return await self.call(grant)

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew the lease once; its remaining TTL in seconds, 0 when it has expired."""

        async def renew(client: Any) -> int:
            replies = client.leasestub.LeaseKeepAlive(
                [rpc.LeaseKeepAliveRequest(ID=lease_id)], timeout=timeout or self.timeout
            )
            async for reply in replies:
                return int(reply.TTL)
            return 0

        return await self.call(renew, timeout=timeout)

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        async def revoke(client: Any) -> None:
            try:
                await client.leasestub.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout or self.timeout
                )
            except rpc.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:  # already expired: fine
                    raise

        await self.call(revoke, timeout=timeout)

    # ---- watches -----------------------------------------------------------------------

    async def next_event(self, key: bytes, after_revision: int, timeout: float) -> KeyEvent | None:
        """The first change to `key` after `after_revision`, or None if none comes in time."""

        async def watch(client: Any) -> KeyEvent | None:
            try:
                watching = await client.watch(key, start_revision=after_revision + 1)
            except aetcd.RevisionCompactedError:
                # History is gone; the caller re-reads the key after the wait it asked for.
                await asyncio.sleep(timeout)
                return None
            try:
                events = aiter(watching)
                try:
                    async with asyncio.timeout(timeout):
                        event = await anext(events)
                except (TimeoutError, StopAsyncIteration):
                    return None
                if isinstance(event, BaseException):
                    raise event
                return KeyEvent(event.kind == "DELETE", _key_value(event.kv))
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await watching.cancel()

        return await self.call(watch, timeout=timeout + self.timeout)
