"""Scorers: rank the agents that can take a request, 0..1, higher is better."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from tessera.placement import scoring
from tessera.placement.context import Context
from tessera.placement.snapshot import Snapshot
from tessera.placement.types import FloatArray, IndexArray

GPUS = 3
SCORE_CACHE_SIZE = 64
"""Distinct task shapes whose scores are kept between requests."""

ScoreFunction = Callable[[FloatArray, FloatArray, FloatArray], FloatArray]


class Scorer(Protocol):
    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None: ...


class _Scores:
    __slots__ = ("values", "version")

    def __init__(self, values: FloatArray, version: int) -> None:
        self.values = values
        self.version = version


def _score_cache(snapshot: Snapshot) -> OrderedDict[object, _Scores]:
    return snapshot.cached("scores", OrderedDict)


class PackingScorer:
    """Scores from `scoring.py`, kept per task shape and recomputed only on changed agents.

    Scores are row-wise (an agent's score depends on its own row), so after placing a
    task only the agents touched since the last call need scoring again; a stream of
    identical requests costs O(changed agents) scoring instead of O(all agents).
    """

    def __init__(self, name: str, function: ScoreFunction) -> None:
        self.name = name
        self.function = function

    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None:
        snapshot = ctx.snapshot
        cache = _score_cache(snapshot)
        key = (self.name, ctx.demand.tobytes())
        entry = cache.get(key)
        if entry is None:
            entry = _Scores(
                self.function(snapshot.free, snapshot.total, ctx.demand), snapshot.version
            )
            cache[key] = entry
            if len(cache) > SCORE_CACHE_SIZE:
                cache.popitem(last=False)
        elif entry.version < snapshot.version:
            stale = np.flatnonzero(snapshot.row_version > entry.version)
            entry.values[stale] = self.function(
                snapshot.free[stale], snapshot.total[stale], ctx.demand
            )
            entry.version = snapshot.version
            cache.move_to_end(key)
        return entry.values[rows]


class BinpackScorer:
    """Fill agents up so that whole agents stay free for large tasks, the way the plan of
    the level chose (`Context.fit`): best fit, evenly for groups that must spread, or the
    lowest agent first."""

    def __init__(self) -> None:
        self.best = PackingScorer("binpack", scoring.binpack_scores)
        self.even = PackingScorer("even", scoring.even_scores)

    def scores(self, ctx: Context, rows: IndexArray) -> FloatArray | None:
        if ctx.fit is scoring.Fit.FIRST:
            first: FloatArray = 1.0 - rows / max(1, ctx.snapshot.n_agents)
            return first
        return (self.even if ctx.fit is scoring.Fit.EVEN else self.best).scores(ctx, rows)


def binpack_scorer() -> BinpackScorer:
    return BinpackScorer()


def spread_scorer() -> PackingScorer:
    """Prefer the least allocated agents."""
    return PackingScorer("spread", scoring.spread_scores)


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
