"""Why tasks were not placed: every agent counted once, under the first check it failed."""

from __future__ import annotations

import numpy as np

from tessera.placement import rules
from tessera.placement.context import Context
from tessera.placement.pipeline import Evaluation, Pipeline
from tessera.placement.types import BoolArray, IntArray, Reason


def _stages(
    pipeline: Pipeline, ctx: Context, evaluation: Evaluation
) -> list[tuple[Reason, IntArray]]:
    """Structural filters, then constraint value limits, then resources and ports."""
    stages: list[tuple[Reason, IntArray]] = []
    later: list[tuple[Reason, IntArray]] = []
    for f, copies in zip(pipeline.filters, evaluation.copies, strict=True):
        if copies is not None:
            (stages if f.structural else later).append((f.reason, copies))
    limits = rules.value_limits(
        ctx.snapshot, ctx.request, max(ctx.remaining, 1), evaluation.caps, evaluation.eligible
    )
    for limit in limits:
        stages.append((Reason.UNFULFILLED_CONSTRAINT, rules.per_agent_limit(limit)))
    return stages + later


def explain(
    pipeline: Pipeline, ctx: Context, evaluation: Evaluation, quota_blocked: bool
) -> dict[str, int]:
    """Per-reason agent counts; agents that pass everything count as QuotaExceeded."""
    counts: dict[str, int] = {}
    open_agents: BoolArray = np.ones(ctx.snapshot.n_agents, dtype=np.bool_)
    for reason, copies in _stages(pipeline, ctx, evaluation):
        rejected = open_agents & (copies <= 0)
        rejected_count = int(np.count_nonzero(rejected))
        if rejected_count:
            counts[reason.value] = counts.get(reason.value, 0) + rejected_count
            open_agents &= ~rejected
    remaining = int(np.count_nonzero(open_agents))
    if quota_blocked and remaining:
        counts[Reason.QUOTA_EXCEEDED.value] = remaining
    return counts
