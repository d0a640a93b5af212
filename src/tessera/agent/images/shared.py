"""Work shared by everyone who asks for the same key while it runs: concurrent pulls of one
image, or one layer needed by two images, happen once.

The work runs in its own task; each caller awaits it shielded, so one caller giving up
(its deadline passed) does not cancel it for the others. When the last caller leaves
before the work is done, the work is cancelled; a caller that comes while a cancelled
work winds down waits for it to end, then starts the work afresh (never two at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0
    abandoned: bool = False


class SharedWork(Generic[K, T]):
    def __init__(self) -> None:
        self._entries: dict[K, _Entry[T]] = {}

    def running(self) -> list[K]:
        return list(self._entries)

    async def run(self, key: K, start: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.get(key)
        while entry is not None and entry.abandoned:
            await asyncio.wait([entry.task])
            entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(asyncio.ensure_future(start()))
            self._entries[key] = entry
            entry.task.add_done_callback(functools.partial(self._finished, key))
        entry.waiters += 1
        try:
            return await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.abandoned = True
                entry.task.cancel()

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.task is task:
            del self._entries[key]
        # Retrieved here so that a failure nobody waited for is not logged as lost.
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()
