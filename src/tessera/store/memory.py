"""An in-process StateStore for unit tests: same semantics as SQLite, no durability."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from tessera.store.base import Delete, Operation, Put, StaleRevision


class MemoryStore:
    def __init__(self) -> None:
        self._objects: dict[str, dict[str, str]] = {}
        self._revision = 0

    async def load(self, kind: str) -> dict[str, dict[str, Any]]:
        return {key: json.loads(raw) for key, raw in self._objects.get(kind, {}).items()}

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = self._objects.get(kind, {}).get(key)
        return None if raw is None else dict(json.loads(raw))

    async def commit(
        self, operations: Sequence[Operation], *, expect_revision: int | None = None
    ) -> int:
        if expect_revision is not None and expect_revision != self._revision:
            raise StaleRevision(expect_revision, self._revision)
        staged = copy.deepcopy(self._objects)
        for op in operations:
            if isinstance(op, Put):
                # Serialising here gives the same "JSON only" contract as the real stores.
                staged.setdefault(op.kind, {})[op.key] = json.dumps(op.value)
            elif isinstance(op, Delete):
                staged.get(op.kind, {}).pop(op.key, None)
        self._objects = staged
        self._revision += 1
        return self._revision

    async def revision(self) -> int:
        return self._revision

    async def close(self) -> None:
        return None
