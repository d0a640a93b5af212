"""Host port availability per agent: one boolean row per agent over the ports any agent offers.

A row spans only [lowest, highest] port offered by any agent (1,001 ports with the default
31000-32000 range), so 5,000 agents cost 5 MB, and a fixed port is one column read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tessera.model.resources import PortRange
from tessera.placement.types import BoolArray, IntArray


class PortTable:
    __slots__ = ("base", "counts", "free", "ranges")

    def __init__(
        self, ranges: Sequence[Sequence[PortRange]], used: Sequence[Iterable[int]]
    ) -> None:
        self.ranges = [tuple(agent) for agent in ranges]
        begins = [r.begin for agent in ranges for r in agent]
        ends = [r.end for agent in ranges for r in agent]
        self.base = min(begins) if begins else 1
        width = max(ends) - self.base + 1 if ends else 0
        self.free: BoolArray = np.zeros((len(ranges), width), dtype=np.bool_)
        for row, agent_ranges in enumerate(ranges):
            for r in agent_ranges:
                self.free[row, r.begin - self.base : r.end - self.base + 1] = True
        for row, ports in enumerate(used):
            self._mark(row, ports, False)
        self.counts: IntArray = self.free.sum(axis=1, dtype=np.int64)

    def _columns(self, ports: Iterable[int]) -> list[int]:
        width = self.free.shape[1]
        return [port - self.base for port in ports if 0 <= port - self.base < width]

    def _mark(self, row: int, ports: Iterable[int], free: bool) -> None:
        self.free[row, self._columns(ports)] = free

    def copy(self) -> PortTable:
        other = object.__new__(PortTable)
        other.ranges, other.base = self.ranges, self.base
        other.free = self.free.copy()
        other.counts = self.counts.copy()
        return other

    def all_free(self, ports: Sequence[int]) -> BoolArray:
        """Agents on which every one of `ports` is offered and unused."""
        columns = self._columns(ports)
        if len(columns) < len(ports):
            return np.zeros(self.free.shape[0], dtype=np.bool_)
        return np.asarray(self.free[:, columns].all(axis=1), dtype=np.bool_)

    def take(
        self, row: int, fixed: Sequence[int], dynamic: int, avoid: Sequence[int] = ()
    ) -> list[int]:
        """Reserve `fixed` ports and the `dynamic` lowest free ones on agent `row`.

        Dynamic ports come from outside `avoid` (ports other tasks will require) while any
        are free there: drawn lowest first, they would otherwise take the low ports users
        often pin and turn an agent away from a task that requires one.
        """
        self._mark(row, fixed, False)
        free = self.free[row]
        if avoid and dynamic:
            avoided = np.zeros(len(free), dtype=np.bool_)
            avoided[self._columns(avoid)] = True
            columns = np.flatnonzero(free & ~avoided)[:dynamic]
            if len(columns) < dynamic:
                columns = np.concatenate([columns, np.flatnonzero(free & avoided)])
        else:
            columns = np.flatnonzero(free)
        chosen = [int(c) + self.base for c in columns[:dynamic]]
        if len(chosen) < dynamic:
            raise ValueError(f"agent row {row} has only {len(chosen)} free ports")
        self._mark(row, chosen, False)
        self.counts[row] -= len(fixed) + dynamic
        return chosen

    def release(self, row: int, ports: Iterable[int]) -> None:
        """Give ports back; ports the agent does not offer stay unavailable."""
        offered = [p for p in ports if any(p in r for r in self.ranges[row])]
        columns = sorted({c for c in self._columns(offered) if not self.free[row, c]})
        self.free[row, columns] = True
        self.counts[row] += len(columns)
