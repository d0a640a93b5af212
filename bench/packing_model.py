"""A model of the engine's group placement, for trying packing heuristics quickly.

Requests (apps) are placed one after another; per request every agent is scored once,
agents are sorted best first and filled with copies, as `tessera.placement.place` does.
Only resources and a per-agent cap (UNIQUE hostname) are modelled: no ports, roles or
other constraints. The packing benchmark runs the real engine next to this model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from bench.packing_workload import PackingWorkload
from tessera.placement import scoring

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Score = Callable[[FloatArray, FloatArray, FloatArray], FloatArray]
Limits = Callable[[FloatArray, FloatArray, FloatArray], IntArray]
Prepare = Callable[[PackingWorkload, FloatArray], tuple[NDArray[np.intp], Limits | None]]
"""(workload, free) -> request order, and the soft per-agent cap of the first fill pass
(None: fill each agent as full as it goes)."""


@dataclass(frozen=True)
class GroupPolicy:
    """A packing heuristic in the engine's model: request order, agent score, fill limits."""

    name: str
    prepare: Prepare
    score: Score = scoring.binpack_scores


def per_agent_cap(workload: PackingWorkload) -> IntArray:
    """Copies of each app one agent may hold: 1 under UNIQUE hostname, else all of them."""
    return np.where(workload.unique, 1, workload.instances).astype(np.int64)


def place_groups(workload: PackingWorkload, n_agents: int, policy: GroupPolicy) -> tuple[int, int]:
    """Place the workload on `n_agents` identical empty agents; (agents used, unplaced)."""
    capacity = np.tile(workload.machine, (n_agents, 1))
    free = capacity.copy()
    cap = per_agent_cap(workload)
    unplaced = 0
    order, soft_limits = policy.prepare(workload, free)
    for app in order:
        demand = workload.demands[app]
        asked = demand > 0
        fit = np.floor(free[:, asked] / demand[asked] + 1e-9).min(axis=1).astype(np.int64)
        rows = np.flatnonzero(np.minimum(fit, cap[app]) > 0)
        scores = policy.score(free[rows], capacity[rows], demand)
        rows = rows[np.argsort(-scores, kind="stable")]
        caps = np.minimum(fit[rows], cap[app])
        count = int(workload.instances[app])
        limits = caps if soft_limits is None else soft_limits(free[rows], capacity[rows], demand)
        copies = scoring.balanced_fill(caps, limits, count)
        free[rows] -= copies[:, None] * demand
        unplaced += count - int(copies.sum())
    used = int(np.any(free < capacity, axis=1).sum())
    return used, unplaced


def planned(workload: PackingWorkload, free: FloatArray) -> tuple[NDArray[np.intp], Limits | None]:
    """`scoring.plan_requests` with everything the engine can pass it."""
    capacity = np.tile(workload.machine, (len(free), 1))
    plan = scoring.plan_requests(
        workload.demands, workload.instances, free, capacity, per_agent_cap(workload)
    )
    if not plan.balanced:
        return plan.order, None
    return plan.order, partial(scoring.binpack_copy_limits, slack=plan.slack)


CHOSEN = GroupPolicy("tessera binpack", planned)
