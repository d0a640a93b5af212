"""Agent attributes as integer codes, so constraints compare numbers, not strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tessera.placement.types import BoolArray, IntArray

MISSING = -1
"""The code of an agent that lacks the attribute."""


class AttributeColumn:
    """One attribute over all agents: `codes[i]` indexes `values`, or is MISSING."""

    __slots__ = ("_index", "codes", "unique", "values")

    def __init__(self, raw: Sequence[str | None]) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}
        codes = np.empty(len(raw), dtype=np.int64)
        for row, value in enumerate(raw):
            codes[row] = MISSING if value is None else self._code_for(value)
        self.codes: IntArray = codes
        # Each agent its own value (e.g. one agent per hostname): limits per value are per agent.
        self.unique = len(self.values) == len(raw) and bool((codes != MISSING).all())

    def _code_for(self, value: str) -> int:
        code = self._index.get(value)
        if code is None:
            code = self._index[value] = len(self.values)
            self.values.append(value)
        return code

    @property
    def n_values(self) -> int:
        return len(self.values)

    def code(self, value: str) -> int:
        return self._index.get(value, MISSING)

    def matching(self, predicate: Callable[[str], bool], missing: bool) -> BoolArray:
        """Agents whose value satisfies `predicate`; the test runs once per distinct value."""
        per_value = np.fromiter(
            (predicate(value) for value in self.values), dtype=np.bool_, count=self.n_values
        )
        # The extra last entry answers for MISSING (-1) codes.
        return np.append(per_value, missing)[self.codes]

    def counts_per_value(self, per_agent: IntArray) -> IntArray:
        """Sum a per-agent count over each value (agents lacking the attribute are left out)."""
        present = self.codes != MISSING
        totals = np.bincount(
            self.codes[present], weights=per_agent[present], minlength=self.n_values
        )
        return totals.astype(np.int64)
