"""`place()`: serve requests by priority and fair share, each through the pipeline."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from tessera.placement.context import Context
from tessera.placement.explain import explain
from tessera.placement.fairness import Sorter, quota_copies
from tessera.placement.ordering import LevelPlan, SpreadPlanning, plan_level
from tessera.placement.pipeline import MIN_SPREAD, Pipeline, build_pipeline, choose, evaluate
from tessera.placement.plan import Eviction, Placement, Plan, Unplaced
from tessera.placement.preemption import find_room
from tessera.placement.request import Policy, Request, Strategy
from tessera.placement.scoring import EXTRA_EFFORT_SIZE
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
                dynamic = snapshot.ports.take(
                    row, request.fixed_ports, request.dynamic_ports, ctx.required_ports
                )
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
        evicted = []
        for index in victims:
            task = snapshot.evict(index)
            sorter.allocated(task.role, -task.demand())
            evicted.append(task.task_id)
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
        plan.placements[-1] = replace(plan.placements[-1], evicts=tuple(evicted))


def _serve(
    pipeline: Pipeline,
    snapshot: Snapshot,
    request: Request,
    policy: Policy,
    plan: _PlanBuilder,
    sorter: Sorter,
    level: LevelPlan,
    required_ports: tuple[int, ...] = (),
) -> int:
    """Place one request as far as it goes; returns how many tasks were placed."""
    demand = request.demand()
    allowed = min(
        request.count,
        quota_copies(policy.quota(request.role), snapshot.allocated(request.role), demand),
    )
    ctx = Context(
        snapshot,
        request,
        demand,
        allowed,
        balanced=level.balanced,
        fit=level.fit_for(request.key),
        slack=level.slack,
        required_ports=required_ports,
    )
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

    Replica spreading (Policy.spread_replicas) is kept only where it costs (almost) nothing:
    when any request could spread, the plan is also made without it on a copy, and the
    spread plan using the fewest agents is kept unless it places fewer tasks or needs more
    agents than `spread_allowance` of the plain plan. Spread plans differ in how their
    look-ahead models the spreading (`SpreadPlanning`); while one needs more agents than
    the plain plan, the next is tried (the last only on small batches of small apps).
    """
    policy = policy or Policy()
    spreading = policy.spread_replicas and policy.strategy is Strategy.BINPACK
    if not spreading or not _may_spread(snapshot, requests):
        return _place(snapshot, requests, policy)
    before = _agents_in_use(snapshot)
    original = snapshot.copy()
    # The look-ahead can plan with the spread's per-agent caps (packs best on many small
    # apps) or as if unspread (packs better with hostname constraints, and costs far less
    # on few requests of many instances): both for small apps, uncapped only for large ones;
    # or with the caps where the fill keeps them (best on some of new users' batches).
    capped_first = sum(r.count for r in requests) <= CAPPED_LOOKAHEAD_MEAN * len(requests)
    modes = [SpreadPlanning.CAPS, SpreadPlanning.NONE] if capped_first else [SpreadPlanning.NONE]
    if capped_first and len(requests) * int(snapshot.active.sum()) <= EXTRA_EFFORT_SIZE:
        modes.append(SpreadPlanning.FIRST_FILL)
    spread_plan = _place(snapshot, requests, policy, modes[0])
    if _agents_in_use(snapshot) == before:
        return spread_plan  # no agent opened: no plan can use fewer
    plain = original.copy()
    plain_plan = _place(plain, requests, replace(policy, spread_replicas=False))
    plain_agents = _agents_in_use(plain)
    best, best_plan = snapshot, spread_plan
    for mode in modes[1:]:
        if _agents_in_use(best) <= plain_agents:
            break
        trial = original.copy()
        trial_plan = _place(trial, requests, policy, mode)
        if _agents_in_use(trial) < _agents_in_use(best) and _places_all_of(trial_plan, plain_plan):
            best, best_plan = trial, trial_plan
    kept = _agents_in_use(best) <= spread_allowance(plain_agents)
    chosen, plan = plain, plain_plan
    if kept and _places_all_of(best_plan, plain_plan):
        chosen, plan = best, best_plan
    if chosen is not snapshot:
        snapshot.__dict__.update(chosen.__dict__)
    return plan


def spread_allowance(plain_agents: int) -> int:
    """The most agents a spread plan may use when the plain plan uses `plain_agents`: that
    plus SPREAD_TOLERANCE of them, or up to SMALL_CLUSTER agents MIN_SPREAD - 1 more (so
    that a small service on a small cluster still spreads). Above SMALL_CLUSTER two more
    agents would be 2-8% on new users' batches of 25-75 agents, where spreading then yields
    for 1-3% of the apps (bench/RESULTS.md)."""
    small = plain_agents <= SMALL_CLUSTER
    return plain_agents + max(int(plain_agents * SPREAD_TOLERANCE), MIN_SPREAD - 1 if small else 0)


def _places_all_of(plan: Plan, plain: Plan) -> bool:
    return plan.placed_count >= plain.placed_count


SMALL_CLUSTER = 12
"""Up to this many agents in use, spreading may cost MIN_SPREAD - 1 agents."""
SPREAD_TOLERANCE = 0.01
"""The share of agents in use that replica spreading may add to a plan."""
CAPPED_LOOKAHEAD_MEAN = 32
"""Up to this many instances per request on average, the look-ahead first plans with the
spread's caps."""


def _may_spread(snapshot: Snapshot, requests: Sequence[Request]) -> bool:
    return any(r.count > 1 or snapshot.apps.total(r.app) > 0 for r in requests)


def _agents_in_use(snapshot: Snapshot) -> int:
    return int(snapshot.in_use().sum())


def _place(
    snapshot: Snapshot,
    requests: Sequence[Request],
    policy: Policy,
    planned_spread: SpreadPlanning = SpreadPlanning.CAPS,
) -> Plan:
    pipeline = build_pipeline(policy)
    plan = _PlanBuilder()
    sorter = Sorter(snapshot.total_capacity(), policy.role_weights)
    for role in sorted({request.role for request in requests}):
        sorter.add(role, snapshot.allocated(role).copy())
    spreading = planned_spread if policy.spread_replicas else SpreadPlanning.NONE
    required = tuple(sorted({port for request in requests for port in request.fixed_ports}))
    for level in _priority_levels([r for r in requests if r.count > 0]):
        level_plan = plan_level(
            snapshot, level, policy.strategy, policy.lookahead_budget, spreading
        )
        queues = _role_queues(level_plan.requests)
        for request in _fair_order(queues, sorter):
            # Roles competing in a level take turns task by task (in chunks that keep their
            # weighted dominant shares level), not request by request: one role's large app
            # must not take the room another role's fair share is owed.
            chunk = _fair_chunk(request, queues, sorter)
            placed = _serve(pipeline, snapshot, chunk, policy, plan, sorter, level_plan, required)
            sorter.allocated(request.role, request.demand() * placed)
            rest = request.count - chunk.count
            if rest <= 0:
                continue
            rest_request = replace(
                request, count=rest, first_instance=request.first_instance + chunk.count
            )
            if placed == chunk.count:
                queues.setdefault(request.role, deque()).appendleft(rest_request)
            else:  # nothing more of it fits: the rest is unplaced, with its reasons
                placed = _serve(
                    pipeline,
                    snapshot,
                    rest_request,
                    policy,
                    plan,
                    sorter,
                    level_plan,
                    required,
                )
                sorter.allocated(request.role, request.demand() * placed)
    return plan.build()


def _fair_chunk(request: Request, queues: dict[str, deque[Request]], sorter: Sorter) -> Request:
    """The part of `request` to serve before the other roles waiting in the level get their
    turn: as many tasks as keep its role's weighted dominant share at most one task past the
    lowest share among them (all of it when no other role waits)."""
    others = [role for role in queues if role != request.role]
    if not others or request.count <= 1:
        return request
    step = sorter.share_of(request.role, request.demand())
    if step <= 0:
        return request
    gap = min(sorter.share(role) for role in others) - sorter.share(request.role)
    count = max(1, min(request.count, int(gap / step) + 1))
    return request if count == request.count else replace(request, count=count)
