"""Scorers: rank the agents that can take a request, 0..1, higher is better."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tessera.placement import scoring
from tessera.placement.context import Context
from tessera.placement.types import FloatArray, IndexArray

GPUS = 3


class Scorer(Protocol):
    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None: ...


class BinpackScorer:
    """Fill agents up so that whole agents stay free for large tasks."""

    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None:
        snapshot = ctx.snapshot
        return scoring.binpack_scores(snapshot.free[rows], snapshot.total[rows], ctx.demand)


class SpreadScorer:
    """Prefer the least allocated agents."""

    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None:
        snapshot = ctx.snapshot
        return scoring.spread_scores(snapshot.free[rows], snapshot.total[rows], ctx.demand)


class AvoidGpuAgents:
    """Keep GPU agents for GPU tasks (Marathon's preferential GPU scheduling)."""

    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None:
        if ctx.demand[GPUS] > 0:
            return None
        total = ctx.snapshot.total
        has_gpus = ctx.snapshot.cached("has_gpus", lambda: total[:, GPUS] > 0)
        if not has_gpus.any():
            return None
        return 1.0 - has_gpus[rows].astype(np.float64)
