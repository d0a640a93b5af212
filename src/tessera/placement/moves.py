"""Moving running instances: how an app's instances may move, one move, and where one can go.

Pure code shared by the rebalance planner (`rebalance.py`) and its wave scheduler
(`waves.py`). A move starts the new copy on the target before the old one is killed
(start-before-kill), so the target must have room while both copies exist; the checks
below run the engine's own filters and constraint limits (`pipeline.evaluate`,
`rules.value_limits`) on a working snapshot, never re-implementing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tessera.model.app import strategy_bounds
from tessera.model.constraints import Operator
from tessera.placement import rules as constraint_rules
from tessera.placement.context import Context
from tessera.placement.explain import explain
from tessera.placement.pipeline import Pipeline, build_pipeline, evaluate, spread_level
from tessera.placement.request import Policy, Request
from tessera.placement.snapshot import Snapshot
from tessera.placement.tasks import RunningTask
from tessera.placement.types import BoolArray, FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class MoveRules:
    """How one app's instances may move.

    `request` is one instance's shape (resources, ports/require_ports, constraints, role,
    needs; its count is ignored); `instances` the app's target count n. The budgets are
    Marathon's upgradeStrategy: at most floor(n x (1 + maximum_over_capacity)) copies run,
    at least ceil(n x minimum_health_capacity) stay healthy.
    """

    request: Request
    instances: int
    minimum_health_capacity: float = 1.0
    maximum_over_capacity: float = 1.0
    movable: bool = True  # False: the app opted out, its instances never move

    def _bounds(self) -> tuple[int, int]:
        return strategy_bounds(
            self.instances, self.minimum_health_capacity, self.maximum_over_capacity
        )

    @property
    def surge(self) -> int:
        """Replacements that may run next to the old instances: floor(n(1+mOC)) - n."""
        return max(0, self._bounds()[1] - self.instances)

    @property
    def slack(self) -> int:
        """Instances that may be down at once: n - ceil(n x mHC)."""
        return max(0, self.instances - self._bounds()[0])

    @property
    def per_wave(self) -> int:
        """Moves of this app one wave may hold (a rolling upgrade's in-flight budget)."""
        return self.surge + self.slack


@dataclass(frozen=True, slots=True)
class Move:
    """Task `task_id` of `app_id` moves from agent `source` to agent `target`."""

    app_id: str
    task_id: str
    source: str
    target: str

    def to_json(self) -> dict[str, str]:
        return {
            "app": self.app_id,
            "instance": self.task_id,
            "from": self.source,
            "to": self.target,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Move:
        return Move(str(data["app"]), str(data["instance"]), str(data["from"]), str(data["to"]))


def why_immovable(
    task: RunningTask, rules: Mapping[str, MoveRules], pinned: frozenset[str] | set[str]
) -> str | None:
    """Why this task may not move at all (None: it may, if some agent takes it)."""
    app_rules = rules.get(task.app_id)
    if app_rules is None:
        return f"app {task.app_id} has no move rules"
    if not app_rules.movable:
        return f"app {task.app_id} opted out of moves"
    if task.task_id in pinned:
        return "pinned (cool-down or unhealthy)"
    if app_rules.per_wave == 0:
        return (
            f"app {task.app_id}: its upgradeStrategy allows no instance down and none extra "
            f"(minimumHealthCapacity {app_rules.minimum_health_capacity}, "
            f"maximumOverCapacity {app_rules.maximum_over_capacity})"
        )
    return None


def _without_group_by(request: Request) -> Request:
    kept = tuple(c for c in request.constraints if c.operator is not Operator.GROUP_BY)
    return request if len(kept) == len(request.constraints) else replace(request, constraints=kept)


class Mover:
    """Finds targets for tasks on a working snapshot and adds their new copies to it.

    The working snapshot holds every old copy and every new copy planned so far (a
    superset of any state the moves pass through), so resource, port, UNIQUE and MAX_PER
    checks against it hold at every intermediate state. Rows in `leaving` are agents being
    emptied: they take nothing, and their tasks do not count for GROUP_BY evenness and
    replica spreading, which are judged at the final state.
    """

    def __init__(self, snapshot: Snapshot, targets: BoolArray) -> None:
        self.snapshot = snapshot
        self.targets = targets.copy()
        self.leaving = np.zeros(snapshot.n_agents, dtype=np.bool_)
        self.received = np.zeros(snapshot.n_agents, dtype=np.int64)
        self.pipeline: Pipeline = build_pipeline(Policy())
        self._requests: dict[int, Request] = {}
        total = snapshot.total
        self.scale: FloatArray = np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)

    def candidates(
        self, task: RunningTask, request: Request, source: int
    ) -> tuple[IntArray, str | None]:
        """Rows that can take a new copy of `task` (now on row `source`); with none, also
        why, in the engine's reason names."""
        snapshot = self.snapshot
        ctx = Context(snapshot, request, task.demand(), 1)
        evaluation = evaluate(self.pipeline, ctx)
        open_rows = self.targets & ~self.leaving
        mask = (evaluation.caps > 0) & open_rows
        engine_ok = int(np.count_nonzero(mask))
        if engine_ok:
            plain = self._requests.setdefault(id(request), _without_group_by(request))
            limits = constraint_rules.value_limits(
                snapshot, plain, 1, evaluation.caps, evaluation.eligible
            )
            for limit in limits:
                mask &= constraint_rules.per_agent_limit(limit) > 0
            mask &= self._group_by_ok(request, evaluation.eligible, source)
            mask &= self._keeps_spread(request.app)
        rows = np.flatnonzero(mask)
        if len(rows):
            return rows, None
        counts = explain(self.pipeline, ctx, evaluation, quota_blocked=False)
        parts = [f"{name}: {count}" for name, count in sorted(counts.items())]
        if engine_ok:
            parts.append(f"would crowd the app on one agent or one GROUP_BY value: {engine_ok}")
        closed = int(np.count_nonzero(~open_rows))
        if closed:
            parts.append(f"not a target (empty, inactive or being emptied): {closed}")
        return rows, "no agent can take it (" + ", ".join(parts) + ")"

    def _final_counts(self, app_id: str) -> IntArray:
        per_agent = self.snapshot.apps.per_agent(app_id)
        return np.where(self.leaving, 0, per_agent)

    def _keeps_spread(self, app_id: str) -> BoolArray | bool:
        """No move leaves an app of two or more instances on one agent."""
        final = self._final_counts(app_id)
        others = int(final.sum())  # the instances that stay where they are, or arrived
        return True if others == 0 else final != others

    def _group_by_ok(self, request: Request, eligible: BoolArray, source: int) -> BoolArray:
        """GROUP_BY at the final state: a move may not leave the app's counts per value
        less even than max(1, how uneven they were with the task on `source`)."""
        ok = np.ones(self.snapshot.n_agents, dtype=np.bool_)
        for constraint in request.constraints:
            if constraint.operator is not Operator.GROUP_BY:
                continue
            column = self.snapshot.attribute(constraint.field)
            counts = column.counts_per_value(self._final_counts(request.app)).astype(np.int64)
            values = np.unique(column.codes[eligible & (column.codes >= 0)])
            if len(values) == 0:
                continue
            here = counts[values]  # the old copy is out: its agent is leaving
            before = here + (values == column.codes[source])
            allowed = max(1, int(before.max() - before.min()))
            ok_value = np.zeros(column.n_values + 1, dtype=np.bool_)
            for k, value in enumerate(values.tolist()):
                after = here.copy()
                after[k] += 1
                ok_value[value] = int(after.max() - after.min()) <= allowed
            ok &= ok_value[column.codes]
        return ok

    def best(self, task: RunningTask, request: Request, rows: IntArray) -> int:
        """Best fit: the row left with the least room (the squares of what each resource
        leaves, as shares of the agent, summed: measured a little tighter than the plain
        sum or the largest share), among rows within the engine's replica-spreading level
        if any is."""
        per_agent = self._final_counts(request.app)
        instances = int(per_agent.sum()) + 1
        if instances > 1:
            level = spread_level(instances, len(rows))
            spread = rows[per_agent[rows] + 1 <= level]
            if 0 < len(spread) < len(rows):
                rows = spread
        left = (self.snapshot.free[rows] - task.demand()) * self.scale[rows]
        return int(rows[int(np.argmin((left**2).sum(axis=1)))])

    def add_copy(self, row: int, task: RunningTask, request: Request) -> int:
        """Charge a new copy of `task` to `row` (new host ports drawn as the engine draws
        them); returns its index in the task table, for `remove`."""
        snapshot = self.snapshot
        ports: tuple[int, ...] = ()
        if request.ports:
            drawn = iter(snapshot.ports.take(row, request.fixed_ports, request.dynamic_ports))
            fixed = request.require_ports
            ports = tuple(port if fixed and port else next(drawn) for port in request.ports)
        snapshot.add_task(row, replace(task, ports=ports))
        self.received[row] += 1
        return len(snapshot.tasks.tasks) - 1

    def remove(self, index: int) -> None:
        self.received[self.snapshot.tasks.agent[index]] -= 1
        self.snapshot.evict(index)
