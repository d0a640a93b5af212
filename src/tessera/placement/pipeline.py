"""The whole placement chain in one place: who may run a task, what fits, who is best."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.placement import rules, scoring
from tessera.placement.context import Context
from tessera.placement.fill import Fill, Limits, fill_binpack, fill_spread
from tessera.placement.filters import (
    AgentChoiceFilter,
    AgentStateFilter,
    CapabilityFilter,
    ConstraintFilter,
    Filter,
    PortFilter,
    ResourceFilter,
    RoleFilter,
)
from tessera.placement.request import Policy, Strategy
from tessera.placement.scorers import AvoidGpuAgents, Scorer, binpack_scorer, spread_scorer
from tessera.placement.types import UNLIMITED, BoolArray, FloatArray, IndexArray, IntArray, Reason

MAX_FILLS = 8
"""Fills per pass when GROUP_BY must hold back values that others could not keep up with."""


ZONE = "zone"
"""The attribute whose values replicas of one app prefer to spread over."""
MIN_SPREAD = 3
"""An app's instances prefer at least this many agents (fewer when it has fewer)."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]
    fill: Fill
    spread_replicas: bool = False


def build_pipeline(policy: Policy) -> Pipeline:
    """Cheap structural checks first, then resources, then scoring and the group fill.

    Value limits of UNIQUE, MAX_PER, GROUP_BY and CLUSTER apply between filters and fill
    (see `rules.value_limits`). Scores are 0..1; GPU avoidance weighs 2, so a task that
    needs no GPU goes to a GPU agent only when no other agent can take it.
    """
    binpack = policy.strategy is Strategy.BINPACK
    return Pipeline(
        filters=(
            AgentStateFilter(),
            RoleFilter(),
            CapabilityFilter(),
            AgentChoiceFilter(),
            ConstraintFilter(),
            ResourceFilter(0, Reason.INSUFFICIENT_CPUS),
            ResourceFilter(1, Reason.INSUFFICIENT_MEMORY),
            ResourceFilter(2, Reason.INSUFFICIENT_DISK),
            ResourceFilter(3, Reason.INSUFFICIENT_GPUS),
            PortFilter(),
        ),
        scorers=((binpack_scorer() if binpack else spread_scorer(), 1.0), (AvoidGpuAgents(), 2.0)),
        fill=fill_binpack if binpack else fill_spread,
        spread_replicas=policy.spread_replicas,
    )


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One request against the current snapshot: each filter's answer and the room left."""

    copies: tuple[IntArray | None, ...]
    caps: IntArray
    eligible: BoolArray

    @property
    def candidates(self) -> IndexArray:
        return np.flatnonzero(self.caps > 0)


def _minimum(parts: list[IntArray], n_agents: int) -> IntArray:
    if not parts:
        return np.full(n_agents, UNLIMITED, dtype=np.int64)
    result = parts[0]
    for part in parts[1:]:
        result = np.minimum(result, part)
    return result


def evaluate(pipeline: Pipeline, ctx: Context) -> Evaluation:
    """Run every filter over all agents; caps are the tasks each agent can still take."""
    copies = tuple(f.copies(ctx) for f in pipeline.filters)
    n_agents = ctx.snapshot.n_agents
    structural = [c for f, c in zip(pipeline.filters, copies, strict=True) if f.structural]
    eligible = _minimum([c for c in structural if c is not None], n_agents) > 0
    caps = np.clip(_minimum([c for c in copies if c is not None], n_agents), 0, ctx.remaining)
    return Evaluation(copies, caps, eligible)


def score(pipeline: Pipeline, ctx: Context, rows: IndexArray) -> FloatArray:
    total = np.zeros(len(rows))
    for scorer, weight in pipeline.scorers:
        scores = scorer.scores(ctx, rows)
        if scores is not None:
            total += weight * scores
    return total


def _soft_caps(ctx: Context, rows: IndexArray) -> IntArray:
    snapshot = ctx.snapshot
    return scoring.binpack_copy_limits(
        snapshot.free[rows], snapshot.total[rows], ctx.demand, ctx.slack
    )


def spread_caps(ctx: Context, ordered: IndexArray) -> tuple[IntArray | None, Limits]:
    """Soft caps that spread an app's instances (counting those already placed): per agent,
    the level they reach spread evenly over MIN_SPREAD agents (or one each when there are
    fewer), and per zone the same over the zones. A first fill stays within them; what does
    not fit goes where there is room (pipeline.fill). The look-ahead plans with the same
    per-agent caps (ordering.plan_level), so packing across apps is kept."""
    snapshot = ctx.snapshot
    existing = snapshot.apps.total(ctx.request.app)
    total = existing + ctx.remaining
    if total <= 1 or len(ordered) <= 1:
        return None, ()
    per_agent = snapshot.apps.per_agent(ctx.request.app)
    level = spread_level(total, len(ordered))
    agent_caps: IntArray = np.maximum(level - per_agent[ordered], 0)
    column = snapshot.attribute(ZONE)
    zone_codes = column.codes[ordered]
    zones = np.unique(zone_codes[zone_codes >= 0])
    if len(zones) <= 1:
        return agent_caps, ()
    zone_level = -(-total // len(zones))
    room = np.maximum(zone_level - column.counts_per_value(per_agent), 0).astype(np.int64)
    return agent_caps, ((zone_codes, room, False),)


def spread_level(instances: int, agents: int) -> int:
    """The most instances of one app an agent takes before the app has spread."""
    return -(-instances // max(1, min(instances, agents, MIN_SPREAD)))


def choose(pipeline: Pipeline, ctx: Context, evaluation: Evaluation) -> tuple[IndexArray, IntArray]:
    """Agents and how many tasks each gets, best first; empty when nothing fits."""
    rows = evaluation.candidates
    if len(rows) == 0:
        return rows, np.zeros(0, dtype=np.int64)
    limits = rules.value_limits(
        ctx.snapshot, ctx.request, ctx.remaining, evaluation.caps, evaluation.eligible
    )
    scores = score(pipeline, ctx, rows)
    if not limits and ctx.remaining == 1:
        return _one(pipeline, ctx, rows, scores)
    ordered = rows[np.argsort(-scores, kind="stable")]
    spread, spread_limits = spread_caps(ctx, ordered) if pipeline.spread_replicas else (None, ())
    codes = [limit.column.codes[ordered] for limit in limits]
    soft = _soft_caps(ctx, ordered) if ctx.balanced else None
    if spread is not None:
        soft = spread if soft is None else np.minimum(soft, spread)
    for _ in range(MAX_FILLS):
        ordered_limits: Limits = [
            (value_codes, limit.remaining.copy(), limit.column.unique)
            for value_codes, limit in zip(codes, limits, strict=True)
        ]
        soft_limits: Limits = [(c, room.copy(), unique) for c, room, unique in spread_limits]
        alloc = pipeline.fill(
            evaluation.caps[ordered], ordered_limits, ctx.remaining, soft, soft_limits
        )
        lowered = [limit.rebalance(c, alloc) for c, limit in zip(codes, limits, strict=True)]
        if not any(lowered):
            break
    chosen = alloc > 0
    return ordered[chosen], alloc[chosen]


def _one(
    pipeline: Pipeline, ctx: Context, rows: IndexArray, scores: FloatArray
) -> tuple[IndexArray, IntArray]:
    """One task: the best agent within the spreading caps, else the best agent."""
    if pipeline.spread_replicas:
        spread, spread_limits = spread_caps(ctx, rows)
        allowed = np.ones(len(rows), dtype=np.bool_) if spread is None else spread > 0
        for codes, room, _ in spread_limits:
            allowed &= np.append(room, 0)[codes] > 0
        if allowed.any() and not allowed.all():
            scores = np.where(allowed, scores, -np.inf)
    best = rows[int(np.argmax(scores))]
    return np.array([best]), np.ones(1, dtype=np.int64)
