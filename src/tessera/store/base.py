"""The StateStore protocol: JSON objects by kind and key, written in atomic, revisioned batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Put:
    kind: str
    key: str
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    key: str


Operation = Put | Delete


class StaleRevision(Exception):
    """A batch was built on a store revision that is no longer the latest."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"store revision is {actual}, batch expected {expected}")
        self.expected = expected
        self.actual = actual


class StoreUnavailable(Exception):
    """The store cannot be reached or has no quorum; the caller may retry later (HTTP 503)."""


class CommitOutcomeUnknown(StoreUnavailable):
    """The store stopped answering while a commit was in flight and it cannot be told
    whether that commit was applied; re-read before retrying."""


class NotLeader(Exception):
    """A fenced write was refused: the writer no longer holds the leadership it was
    granted, whether or not it has noticed yet."""


class StateStore(Protocol):
    """Every implementation is durable when `commit` returns (memory only within a process).

    The revision increases by one with every committed batch, so a writer that read the
    store at revision R can commit "only if nothing changed since R".
    """

    async def load(self, kind: str) -> dict[str, dict[str, Any]]: ...

    async def get(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int: ...

    async def revision(self) -> int: ...

    async def close(self) -> None: ...
