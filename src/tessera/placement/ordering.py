"""The order in which one priority level's requests are served, and how binpack fills them.

For binpack the packing policy (`scoring.plan_requests`) tries orders and fills on a copy
of the agents and picks the one using the fewest agents; for spread, largest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from tessera.model.constraints import Operator
from tessera.placement import scoring
from tessera.placement.pipeline import spread_level
from tessera.placement.request import Request, Strategy
from tessera.placement.snapshot import Snapshot


class SpreadPlanning(Enum):
    """How the look-ahead models replica spreading's per-agent caps (pipeline.spread_caps)."""

    NONE = "none"
    """Not at all: it plans as if unspread."""
    CAPS = "caps"
    """As hard caps per agent (packs best on many small apps)."""
    FIRST_FILL = "first fill"
    """As the fill applies them: a first pass within them, then the rest where it fits."""


@dataclass(frozen=True, slots=True)
class LevelPlan:
    requests: list[Request]
    """The level's requests in serving order (fairness then picks among roles)."""
    balanced: bool
    """Binpack fills agents in two passes, first up to `scoring.binpack_copy_limits`."""
    fit: scoring.Fit = scoring.Fit.BEST
    """Which agents binpack fills first."""
    slack: float | None = None
    """The balanced fill's slack (None: `scoring.BALANCE_SLACK`)."""
    must_spread: frozenset[str] = frozenset()
    """Keys of the requests with fewer tasks per agent than they have (`Fit.EVEN`)."""

    def fit_for(self, key: str) -> scoring.Fit:
        if self.fit is scoring.Fit.EVEN and key not in self.must_spread:
            return scoring.Fit.BEST
        return self.fit


def _per_agent_cap(request: Request) -> int:
    """Tasks of the request one agent may hold by its hostname constraints."""
    cap = request.count
    for constraint in request.constraints:
        if constraint.field != "hostname":
            continue
        if constraint.operator is Operator.UNIQUE:
            cap = min(cap, 1)
        elif constraint.operator is Operator.MAX_PER:
            cap = min(cap, constraint.count)
    if request.fixed_ports:
        cap = min(cap, 1)  # an agent has each host port once
    return cap


def _exclusive(snapshot: Snapshot, level: list[Request]) -> scoring.Exclusive | None:
    """The level's required host ports as the look-ahead's exclusive keys (None: no port is
    required), with the ports the active agents cannot give already taken."""
    ports = sorted({port for request in level for port in request.fixed_ports})
    if not ports:
        return None
    key = {port: index for index, port in enumerate(ports)}
    active = snapshot.active
    taken = np.column_stack([~snapshot.ports.all_free([port])[active] for port in ports])
    claims = tuple(
        np.array([key[port] for port in request.fixed_ports], dtype=np.intp) for request in level
    )
    return scoring.Exclusive(claims, taken)


def _spread_cap(request: Request, spreading: bool, agents: int, cap: int) -> int:
    if not spreading or request.count <= 1:
        return cap
    return min(cap, spread_level(request.count, agents))


def plan_level(
    snapshot: Snapshot,
    level: list[Request],
    strategy: Strategy,
    lookahead_budget: int,
    spreading: SpreadPlanning = SpreadPlanning.NONE,
) -> LevelPlan:
    """`spreading`: how the look-ahead plans with the per-agent caps that replica spreading
    keeps in the fill (pipeline.spread_caps)."""
    if len(level) == 1:
        return LevelPlan(level, False)
    demands = np.array([request.demand() for request in level])
    size = len(level) * max(len(level), int(snapshot.active.sum()))
    over_budget = size > lookahead_budget
    if strategy is Strategy.SPREAD or over_budget:
        order = scoring.order_requests(demands, snapshot.total_capacity())
        return LevelPlan([level[i] for i in order.tolist()], False)
    active = snapshot.active
    counts = np.array([request.count for request in level], dtype=np.int64)
    agents = int(active.sum())
    hard = spreading is SpreadPlanning.CAPS
    per_agent = np.array(
        [_spread_cap(request, hard, agents, _per_agent_cap(request)) for request in level],
        dtype=np.int64,
    )
    soft = None
    if spreading is SpreadPlanning.FIRST_FILL:
        soft = np.array([_spread_cap(r, True, agents, r.count) for r in level], dtype=np.int64)
    plan = scoring.plan_requests(
        demands,
        counts,
        snapshot.free[active],
        snapshot.total[active],
        per_agent,
        _exclusive(snapshot, level),
        soft,
    )
    must_spread = frozenset(level[i].key for i in np.flatnonzero(per_agent < counts).tolist())
    ordered = [level[i] for i in plan.order.tolist()]
    return LevelPlan(ordered, plan.balanced, plan.fit, plan.slack, must_spread)
