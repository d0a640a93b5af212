"""A clock that moves only when told to: tests and benchmarks step time instead of sleeping."""

from __future__ import annotations

import time


class FakeClock:
    """Both readings start at the given instants and move together with `advance`."""

    def __init__(self, wall: float | None = None, monotonic: float = 1000.0) -> None:
        self._wall = time.time() if wall is None else wall
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._wall += seconds
        self._monotonic += seconds
