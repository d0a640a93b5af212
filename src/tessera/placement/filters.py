"""Feasibility filters: each says, for every agent at once, how many more tasks it can host.

A filter returns None when it does not limit the request at all, which keeps the common
case (no constraints, no ports, no reservations) to a few vector operations.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tessera.placement import rules
from tessera.placement.context import Context
from tessera.placement.snapshot import UNRESERVED
from tessera.placement.types import EPSILON, UNLIMITED, BoolArray, IntArray, Reason


def as_copies(mask: BoolArray) -> IntArray:
    return np.where(mask, UNLIMITED, 0)


class Filter(Protocol):
    reason: Reason
    structural: bool
    """True when the answer does not depend on free resources (the agent could ever fit)."""

    def copies(self, ctx: Context) -> IntArray | None: ...


class AgentStateFilter:
    """Only active agents take new tasks (not draining, unreachable or gone)."""

    reason = Reason.AGENT_UNAVAILABLE
    structural = True

    def copies(self, ctx: Context) -> IntArray | None:
        active = ctx.snapshot.active
        return ctx.snapshot.cached("active", lambda: None if active.all() else as_copies(active))


class RoleFilter:
    """An agent reserved for a role only runs that role's tasks; unreserved agents run any."""

    reason = Reason.UNFULFILLED_ROLE
    structural = True

    def copies(self, ctx: Context) -> IntArray | None:
        roles = ctx.snapshot.roles
        if roles.values == [UNRESERVED]:
            return None
        role = ctx.request.role
        return ctx.snapshot.cached(
            ("role", role),
            lambda: as_copies(
                (roles.codes == roles.code(UNRESERVED)) | (roles.codes == roles.code(role))
            ),
        )


class CapabilityFilter:
    """Only agents that offer what the task needs (a container runtime, bridge networking)."""

    reason = Reason.UNSUPPORTED_CONTAINER_RUNTIME
    structural = True

    def copies(self, ctx: Context) -> IntArray | None:
        needs = ctx.request.needs
        if not needs:
            return None
        offered = ctx.snapshot.capabilities
        return ctx.snapshot.cached(
            ("needs", needs),
            lambda: as_copies(np.array([needs <= caps for caps in offered], dtype=np.bool_)),
        )


class AgentChoiceFilter:
    """A request that names its agents (`Request.agents`) goes to one of them only."""

    reason = Reason.UNFULFILLED_CONSTRAINT
    structural = True

    def copies(self, ctx: Context) -> IntArray | None:
        chosen = ctx.request.agents
        if not chosen:
            return None
        index = ctx.snapshot.index

        def mask() -> IntArray:
            allowed = np.zeros(ctx.snapshot.n_agents, dtype=np.bool_)
            allowed[[index[a] for a in chosen if a in index]] = True
            return as_copies(allowed)

        return ctx.snapshot.cached(("agents", chosen), mask)


class ConstraintFilter:
    """Agents the request's constraints exclude outright (LIKE, UNLIKE, IS, CLUSTER, …)."""

    reason = Reason.UNFULFILLED_CONSTRAINT
    structural = True

    def copies(self, ctx: Context) -> IntArray | None:
        mask = rules.static_mask(ctx.snapshot, ctx.request)
        return None if mask is None else as_copies(mask)


class ResourceFilter:
    """How many tasks fit in one scalar resource: floor(free / demand)."""

    structural = False

    def __init__(self, column: int, reason: Reason) -> None:
        self.column = column
        self.reason = reason

    def copies(self, ctx: Context) -> IntArray | None:
        demand = ctx.demand[self.column]
        if demand <= 0:
            return None
        fit: IntArray = np.floor(ctx.snapshot.free[:, self.column] / demand + EPSILON).astype(
            np.int64
        )
        return fit


class PortFilter:
    """Dynamic ports come from the agent's free ranges; required ports must all be free."""

    reason = Reason.INSUFFICIENT_PORTS
    structural = False

    def copies(self, ctx: Context) -> IntArray | None:
        request = ctx.request
        if not request.ports:
            return None
        table = ctx.snapshot.ports
        fixed = request.fixed_ports
        if not fixed:
            return np.floor_divide(table.counts, request.dynamic_ports)
        # Two tasks cannot share a fixed port, so an agent hosts at most one of them.
        room = table.counts >= len(request.ports)
        return (table.all_free(fixed) & room).astype(np.int64)
