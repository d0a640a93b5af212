"""A model of the engine's group placement, for trying packing heuristics quickly.

Requests (apps) are placed one after another; per request every agent is scored once,
agents are sorted best first and filled with copies, as `tessera.placement.place` does.
Only resources, a per-agent cap (UNIQUE hostname) and required host ports (one task per
port and agent) are modelled: no dynamic ports, roles or other constraints. The packing
benchmark runs the real engine next to this model.
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
    planner: bool = False
    """Follow `scoring.plan_requests` whole (order, fill slack and `Fit`), as the engine does."""


def per_agent_cap(workload: PackingWorkload) -> IntArray:
    """Copies of each app one agent may hold: 1 under UNIQUE hostname or with a required
    host port, else all of them."""
    one = workload.unique | (workload.fixed_port > 0)
    return np.where(one, 1, workload.instances).astype(np.int64)


def exclusive_ports(workload: PackingWorkload, n_agents: int) -> scoring.Exclusive | None:
    """The required host ports as the look-ahead's exclusive keys (None: none required)."""
    ports = np.unique(workload.fixed_port[workload.fixed_port > 0])
    if len(ports) == 0:
        return None
    keys = np.searchsorted(ports, workload.fixed_port)
    claims = tuple(
        np.array([keys[app]] if port else [], dtype=np.intp)
        for app, port in enumerate(workload.fixed_port.tolist())
    )
    return scoring.Exclusive(claims, np.zeros((n_agents, len(ports)), dtype=np.bool_))


def place_groups(workload: PackingWorkload, n_agents: int, policy: GroupPolicy) -> tuple[int, int]:
    """Place the workload on `n_agents` identical empty agents; (agents used, unplaced)."""
    capacity = np.tile(workload.machine, (n_agents, 1))
    free = capacity.copy()
    cap = per_agent_cap(workload)
    port_taken: dict[int, NDArray[np.bool_]] = {}
    unplaced = 0
    fit_rule = scoring.Fit.BEST
    if policy.planner:
        plan = _plan(workload, free)
        order, soft_limits, fit_rule = *_order_and_limits(plan), plan.fit
    else:
        order, soft_limits = policy.prepare(workload, free)
    for app in order:
        demand = workload.demands[app]
        asked = demand > 0
        fit = np.floor(free[:, asked] / demand[asked] + 1e-9).min(axis=1).astype(np.int64)
        port = int(workload.fixed_port[app])
        taken = port_taken.setdefault(port, np.zeros(n_agents, dtype=np.bool_))
        if port:
            fit[taken] = 0
        rows = np.flatnonzero(np.minimum(fit, cap[app]) > 0)
        count = int(workload.instances[app])
        if fit_rule is not scoring.Fit.FIRST:  # first fit: lowest agents first
            even = fit_rule is scoring.Fit.EVEN and cap[app] < count
            scores = (scoring.even_scores if even else policy.score)(
                free[rows], capacity[rows], demand
            )
            rows = rows[np.argsort(-scores, kind="stable")]
        caps = np.minimum(fit[rows], cap[app])
        limits = caps if soft_limits is None else soft_limits(free[rows], capacity[rows], demand)
        copies = scoring.balanced_fill(caps, limits, count)
        free[rows] -= copies[:, None] * demand
        if port:
            taken[rows[copies > 0]] = True
        unplaced += count - int(copies.sum())
    used = int(np.any(free < capacity, axis=1).sum())
    return used, unplaced


def _plan(workload: PackingWorkload, free: FloatArray) -> scoring.PackingPlan:
    capacity = np.tile(workload.machine, (len(free), 1))
    return scoring.plan_requests(
        workload.demands,
        workload.instances,
        free,
        capacity,
        per_agent_cap(workload),
        exclusive_ports(workload, len(free)),
    )


def planned(workload: PackingWorkload, free: FloatArray) -> tuple[NDArray[np.intp], Limits | None]:
    """`scoring.plan_requests` with everything the engine can pass it: order and fill."""
    return _order_and_limits(_plan(workload, free))


def _order_and_limits(plan: scoring.PackingPlan) -> tuple[NDArray[np.intp], Limits | None]:
    if not plan.balanced:
        return plan.order, None
    return plan.order, partial(scoring.binpack_copy_limits, slack=plan.slack)


CHOSEN = GroupPolicy("tessera binpack", planned, planner=True)
