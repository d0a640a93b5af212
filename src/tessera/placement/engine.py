"""`place()`: serve requests by priority and fair share, each through the pipeline."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from tessera.placement.context import Context
from tessera.placement.explain import explain
from tessera.placement.fairness import Sorter, quota_copies
from tessera.placement.ordering import plan_level
from tessera.placement.pipeline import Pipeline, build_pipeline, choose, evaluate
from tessera.placement.plan import Eviction, Placement, Plan, Unplaced
from tessera.placement.preemption import find_room
from tessera.placement.request import Policy, Request
from tessera.placement.snapshot import Snapshot
from tessera.placement.types import IndexArray, IntArray


class _PlanBuilder:
    def __init__(self) -> None:
        self.placements: list[Placement] = []
        self.unplaced: list[Unplaced] = []
        self.evictions: list[Eviction] = []

    def build(self) -> Plan:
        return Plan(tuple(self.placements), tuple(self.unplaced), tuple(self.evictions))


def _commit(ctx: Context, rows: IndexArray, copies: IntArray, plan: _PlanBuilder) -> int:
    """Charge the chosen agents, draw ports, and record one placement per task."""
    snapshot, request = ctx.snapshot, ctx.request
    instance = request.first_instance + ctx.placed
    placed = 0
    for row, count in zip(rows.tolist(), copies.tolist(), strict=True):
        snapshot.commit(row, request.app, request.role, ctx.demand, count)
        agent_id = snapshot.agent_ids[row]
        if request.ports:
            for _ in range(count):
                dynamic = snapshot.ports.take(row, request.fixed_ports, request.dynamic_ports)
                ports = _in_definition_order(request, dynamic)
                plan.placements.append(Placement(request.key, instance, agent_id, ports))
                instance += 1
        else:
            plan.placements.extend(
                Placement(request.key, i, agent_id) for i in range(instance, instance + count)
            )
            instance += count
        placed += count
    ctx.remaining -= placed
    ctx.placed += placed
    return placed


def _in_definition_order(request: Request, dynamic: list[int]) -> tuple[int, ...]:
    """Host ports in the order of the port definitions (fixed where required, else drawn)."""
    drawn = iter(dynamic)
    fixed = request.require_ports
    return tuple(port if fixed and port else next(drawn) for port in request.ports)


def _preempt(pipeline: Pipeline, ctx: Context, plan: _PlanBuilder, sorter: Sorter) -> None:
    snapshot = ctx.snapshot
    while ctx.remaining > 0:
        room = find_room(pipeline, ctx, evaluate(pipeline, ctx))
        if room is None:
            return
        row, victims = room
        for index in victims:
            task = snapshot.evict(index)
            sorter.allocated(task.role, -task.demand())
            plan.evictions.append(
                Eviction(
                    task.task_id,
                    task.app_id,
                    snapshot.agent_ids[row],
                    task.priority,
                    ctx.request.key,
                )
            )
        _commit(ctx, np.array([row]), np.ones(1, dtype=np.int64), plan)


def _serve(
    pipeline: Pipeline,
    snapshot: Snapshot,
    request: Request,
    policy: Policy,
    plan: _PlanBuilder,
    sorter: Sorter,
    balanced: bool,
) -> int:
    """Place one request as far as it goes; returns how many tasks were placed."""
    demand = request.demand()
    allowed = min(
        request.count,
        quota_copies(policy.quota(request.role), snapshot.allocated(request.role), demand),
    )
    ctx = Context(snapshot, request, demand, allowed, balanced=balanced)
    while ctx.remaining > 0:
        rows, copies = choose(pipeline, ctx, evaluate(pipeline, ctx))
        if len(rows) == 0:
            break
        _commit(ctx, rows, copies, plan)
    if ctx.remaining > 0 and policy.preemption:
        _preempt(pipeline, ctx, plan, sorter)
    placed = ctx.placed
    if placed < request.count:
        ctx.remaining = request.count - placed
        reasons = explain(pipeline, ctx, evaluate(pipeline, ctx), quota_blocked=placed >= allowed)
        plan.unplaced.append(Unplaced(request.key, request.count - placed, reasons))
    return placed


def _priority_levels(requests: Sequence[Request]) -> list[list[Request]]:
    levels: dict[int, list[Request]] = {}
    for request in requests:
        levels.setdefault(request.priority, []).append(request)
    return [levels[priority] for priority in sorted(levels, reverse=True)]


def _role_queues(ordered: list[Request]) -> dict[str, deque[Request]]:
    """Per role, its requests in serving order."""
    queues: dict[str, deque[Request]] = {}
    for request in ordered:
        queues.setdefault(request.role, deque()).append(request)
    return queues


def _fair_order(queues: dict[str, deque[Request]], sorter: Sorter) -> Iterator[Request]:
    """Next request of the role with the lowest weighted dominant share, until all are served."""
    while queues:
        role = next(role for role in sorter.sort() if role in queues)
        queue = queues[role]
        yield queue.popleft()
        if not queue:
            del queues[role]


def place(snapshot: Snapshot, requests: Sequence[Request], policy: Policy | None = None) -> Plan:
    """Place every request it can; mutates `snapshot` to include the plan.

    Higher priorities go first; within a priority, roles take turns in dominant-resource
    fair order, and each role's requests go in the order the packing policy picks
    (`scoring.plan_requests` for binpack, largest first for spread).
    """
    policy = policy or Policy()
    pipeline = build_pipeline(policy)
    plan = _PlanBuilder()
    sorter = Sorter(snapshot.total_capacity(), policy.role_weights)
    for role in sorted({request.role for request in requests}):
        sorter.add(role, snapshot.allocated(role).copy())
    for level in _priority_levels([r for r in requests if r.count > 0]):
        level_plan = plan_level(snapshot, level, policy.strategy, policy.lookahead_budget)
        for request in _fair_order(_role_queues(level_plan.requests), sorter):
            placed = _serve(pipeline, snapshot, request, policy, plan, sorter, level_plan.balanced)
            sorter.allocated(request.role, request.demand() * placed)
    return plan.build()
