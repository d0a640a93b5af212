"""Group commit: writes that arrive while a flush is on disk share the next flush.

Under load, one fsync then covers many writes instead of one each; with no load a write is
flushed at once. The flush runs on one worker thread, so the event loop keeps serving while
the disk works, and flushes never overlap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommitter(Generic[Item, Result]):
    def __init__(
        self,
        # Returns, for each item, its result or the exception that item alone raised.
        flush: Callable[[Sequence[Item]], Sequence[Result | BaseException]],
        worker: concurrent.futures.Executor,
    ) -> None:
        self._flush = flush
        self._worker = worker
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                items = [item for item, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._worker, self._flush, items)
                except BaseException as error:  # the whole flush failed: so did every write
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._draining = False
