"""Marathon constraints over agent columns: masks that exclude agents, limits per value.

LIKE, UNLIKE, IS and CLUSTER with a value only depend on attributes, so their masks are
computed once per snapshot (one regex test per distinct value, not per agent). UNIQUE,
MAX_PER, GROUP_BY and CLUSTER without a value depend on where the app's tasks already run;
they become a limit per attribute value that the fill step respects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from tessera.model.constraints import Constraint, Operator
from tessera.placement.attributes import MISSING, AttributeColumn
from tessera.placement.fill import water_fill
from tessera.placement.request import Request
from tessera.placement.snapshot import Snapshot
from tessera.placement.types import BoolArray, IndexArray, IntArray

_PER_VALUE = (Operator.UNIQUE, Operator.MAX_PER, Operator.GROUP_BY)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _equals(expected: str) -> Callable[[str], bool]:
    """Text equality; numbers also match at 1/1000 precision, as Marathon compares scalars."""
    number = _number(expected)

    def test(value: str) -> bool:
        if value == expected:
            return True
        other = None if number is None else _number(value)
        return other is not None and number is not None and round(other, 3) == round(number, 3)

    return test


def _full_match(constraint: Constraint, value: str) -> bool:
    return constraint.pattern.fullmatch(value) is not None


def constraint_mask(column: AttributeColumn, constraint: Constraint) -> BoolArray | None:
    """Agents the constraint admits judging by attributes alone (None: all of them)."""
    operator, value = constraint.operator, constraint.value
    if operator is Operator.LIKE:
        return column.matching(partial(_full_match, constraint), missing=False)
    if operator is Operator.UNLIKE:
        return column.matching(lambda v: not _full_match(constraint, v), missing=True)
    if value is not None and operator in (Operator.IS, Operator.CLUSTER):
        return column.matching(_equals(value), missing=False)
    # UNIQUE, MAX_PER, GROUP_BY and CLUSTER without value need the attribute to be there.
    present = column.codes != MISSING
    return None if present.all() else present


def _cluster_existing(snapshot: Snapshot, column: AttributeColumn, key: str) -> BoolArray | None:
    """CLUSTER without a value: once tasks run, only their value is allowed."""
    existing = column.counts_per_value(snapshot.apps.per_agent(key))
    used = np.flatnonzero(existing)
    if len(used) == 0:
        return None
    if len(used) > 1:
        return np.zeros(snapshot.n_agents, dtype=np.bool_)
    return column.codes == used[0]  # type: ignore[no-any-return]


def static_mask(snapshot: Snapshot, request: Request) -> BoolArray | None:
    """The conjunction of what every constraint of the request admits."""
    mask: BoolArray | None = None
    for constraint in request.constraints:
        column = snapshot.attribute(constraint.field)
        masks = [
            snapshot.cached(
                ("constraint", constraint), partial(constraint_mask, column, constraint)
            )
        ]
        if constraint.operator is Operator.CLUSTER and constraint.value is None:
            masks.append(_cluster_existing(snapshot, column, request.app))
        for part in masks:
            if part is not None:
                mask = part if mask is None else mask & part
    return mask


@dataclass(frozen=True, slots=True)
class ValueLimit:
    """At most `remaining[code]` more tasks of the request on agents with that value."""

    column: AttributeColumn
    remaining: IntArray
    existing: IntArray
    balanced: IndexArray | None = None
    """GROUP_BY: the values whose counts may differ by at most one."""

    def rebalance(self, codes: IntArray, taken: IntArray) -> bool:
        """Lower the limits of values that `taken` (per agent, codes alike) lifts above the
        least-served value plus one; True when something was lowered, so fill again."""
        if self.balanced is None or len(self.balanced) == 0:
            return False
        chosen = taken > 0
        added = np.bincount(codes[chosen], weights=taken[chosen], minlength=len(self.remaining))
        achieved = self.existing + added.astype(np.int64)
        ceiling = int(achieved[self.balanced].min()) + 1
        over = self.balanced[achieved[self.balanced] > ceiling]
        if len(over) == 0:
            return False
        self.remaining[over] = np.maximum(ceiling - self.existing[over], 0)
        return True


def _group_by(
    column: AttributeColumn,
    existing: IntArray,
    count: int,
    caps: IntArray,
    eligible: BoolArray,
    expected: int,
) -> tuple[IntArray, IndexArray]:
    """Even spread over the values of the eligible agents, whatever the order of agents.

    With `GROUP_BY n` and fewer than n values seen, the missing values count as empty
    groups, so tasks never pile up beyond an even share of n.
    """
    present = eligible & (column.codes != MISSING)
    values = np.unique(column.codes[present])
    capacity = np.bincount(column.codes[present], weights=caps[present], minlength=column.n_values)
    virtual = max(0, expected - len(values))
    slots = np.concatenate([existing[values], np.zeros(virtual, dtype=np.int64)])
    preference = np.concatenate([capacity[values], np.full(virtual, -1.0)])
    remaining = np.zeros(column.n_values, dtype=np.int64)
    remaining[values] = water_fill(slots, count, preference)[: len(values)]
    return remaining, values


def _cluster_choice(column: AttributeColumn, count: int, caps: IntArray) -> IntArray:
    """CLUSTER without a value and no task yet: the value that can hold the most tasks."""
    present = column.codes != MISSING
    capacity = np.bincount(column.codes[present], weights=caps[present], minlength=column.n_values)
    remaining = np.zeros(column.n_values, dtype=np.int64)
    if column.n_values:
        remaining[int(np.argmax(capacity))] = count
    return remaining


def value_limits(
    snapshot: Snapshot, request: Request, count: int, caps: IntArray, eligible: BoolArray
) -> list[ValueLimit]:
    limits: list[ValueLimit] = []
    for constraint in request.constraints:
        operator = constraint.operator
        clustered = operator is Operator.CLUSTER and constraint.value is None
        if operator not in _PER_VALUE and not clustered:
            continue
        column = snapshot.attribute(constraint.field)
        existing = column.counts_per_value(snapshot.apps.per_agent(request.app))
        balanced = None
        if operator is Operator.UNIQUE:
            remaining = (existing == 0).astype(np.int64)
        elif operator is Operator.MAX_PER:
            remaining = np.maximum(constraint.count - existing, 0)
        elif operator is Operator.GROUP_BY:
            remaining, balanced = _group_by(
                column, existing, count, caps, eligible, constraint.count
            )
        elif existing.any():
            continue  # CLUSTER with tasks running: the static mask already pins the value
        else:
            remaining = _cluster_choice(column, count, caps)
        limits.append(ValueLimit(column, remaining, existing, balanced))
    return limits


def per_agent_limit(limit: ValueLimit) -> IntArray:
    """The value limit seen from each agent (0 for agents lacking the attribute)."""
    # The appended 0 answers for MISSING (-1) codes.
    per_agent: IntArray = np.append(limit.remaining, 0)[limit.column.codes]
    return per_agent
