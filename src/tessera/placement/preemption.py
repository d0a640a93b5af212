"""Preemption: make room for a higher-priority task by evicting the fewest, lowest tasks."""

from __future__ import annotations

import numpy as np

from tessera.placement import rules
from tessera.placement.context import Context
from tessera.placement.pipeline import Evaluation, Pipeline
from tessera.placement.types import (
    EPSILON,
    N_RESOURCES,
    RESOURCE_REASONS,
    BoolArray,
    FloatArray,
    IntArray,
)

CANDIDATE_AGENTS = 32
"""Agents examined task by task; they are the ones with the smallest shortfall."""


def _allowed_apart_from_resources(
    pipeline: Pipeline, ctx: Context, evaluation: Evaluation
) -> BoolArray:
    allowed = np.ones(ctx.snapshot.n_agents, dtype=np.bool_)
    for f, copies in zip(pipeline.filters, evaluation.copies, strict=True):
        if copies is not None and f.reason not in RESOURCE_REASONS:
            allowed &= copies > 0
    limits = rules.value_limits(ctx.snapshot, ctx.request, 1, evaluation.caps, evaluation.eligible)
    for limit in limits:
        allowed &= rules.per_agent_limit(limit) > 0
    return allowed


def _fits(room: FloatArray, need: FloatArray) -> bool:
    return bool((room >= need - EPSILON).all())


def _greedy(
    order: IntArray, free: FloatArray, need: FloatArray, demands: FloatArray, priorities: IntArray
) -> list[int] | None:
    """Evict in `order` until the task fits, then give back any eviction not needed."""
    taken: list[int] = []
    room = free.copy()
    for victim in order.tolist():
        if _fits(room, need):
            break
        taken.append(victim)
        room = room + demands[victim]
    if not _fits(room, need):
        return None
    for victim in sorted(taken, key=lambda v: -priorities[v]):
        if _fits(room - demands[victim], need):
            taken.remove(victim)
            room = room - demands[victim]
    return taken


def _cost(taken: list[int], priorities: IntArray) -> tuple[int, int, int]:
    chosen = priorities[taken]
    return len(taken), int(chosen.max(initial=0)), int(chosen.sum())


def pick_victims(
    free: FloatArray, need: FloatArray, demands: FloatArray, priorities: IntArray
) -> list[int] | None:
    """Fewest tasks first, then the lowest priorities; indices into `demands`."""
    shortfall = np.maximum(need - free, 0.0)
    cover = (np.minimum(demands, shortfall) / np.maximum(shortfall, EPSILON)).sum(axis=1)
    orders = (np.lexsort((-cover, priorities)), np.lexsort((priorities, -cover)))
    answers = [_greedy(order, free, need, demands, priorities) for order in orders]
    found = [answer for answer in answers if answer is not None]
    return min(found, key=lambda taken: _cost(taken, priorities)) if found else None


def find_room(
    pipeline: Pipeline, ctx: Context, evaluation: Evaluation
) -> tuple[int, list[int]] | None:
    """An agent and the running tasks (task-table rows) to evict there, or None."""
    snapshot = ctx.snapshot
    agent, priority, demands = snapshot.tasks.columns()
    victims = np.flatnonzero((agent >= 0) & (priority < ctx.request.priority))
    if len(victims) == 0:
        return None
    freeable = np.stack(
        [
            np.bincount(agent[victims], weights=demands[victims, r], minlength=snapshot.n_agents)
            for r in range(N_RESOURCES)
        ],
        axis=1,
    )
    allowed = _allowed_apart_from_resources(pipeline, ctx, evaluation)
    need = ctx.demand
    rows = np.flatnonzero(allowed & ((snapshot.free + freeable) >= need - EPSILON).all(axis=1))
    if len(rows) == 0:
        return None
    shortfall = np.maximum(need - snapshot.free[rows], 0.0) / np.maximum(snapshot.total[rows], 1.0)
    rows = rows[np.argsort(shortfall.sum(axis=1), kind="stable")[:CANDIDATE_AGENTS]]
    victims = victims[np.argsort(agent[victims], kind="stable")]
    bounds = np.searchsorted(agent[victims], np.stack([rows, rows + 1]))
    best: tuple[tuple[int, int, int], int, list[int]] | None = None
    for row, start, end in zip(rows.tolist(), bounds[0].tolist(), bounds[1].tolist(), strict=True):
        local = victims[start:end]
        taken = pick_victims(snapshot.free[row], need, demands[local], priority[local])
        if taken is None:
            continue
        cost = _cost(taken, priority[local])
        if best is None or cost < best[0]:
            best = (cost, row, [int(local[i]) for i in taken])
    return None if best is None else (best[1], best[2])
