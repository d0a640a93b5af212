"""The placement engine: a cluster snapshot and a batch of requests in, a plan out.

Pure code (no I/O, no clock, no asyncio). Typical use::

    snapshot = Snapshot.build([AgentDescription("a1", "h1", Resources(cpus=8, mem=32768))])
    plan = place(snapshot, [Request("/web", 3, Resources(cpus=1, mem=512), ports=(0,))], Policy())

`place()` updates the snapshot in place, so the next call sees the placements of this one.
"""

from tessera.model.constraints import Constraint, ConstraintError, parse_constraints
from tessera.placement.engine import place
from tessera.placement.plan import Eviction, Placement, Plan, Unplaced
from tessera.placement.request import Policy, Request, Strategy
from tessera.placement.snapshot import UNRESERVED, AgentDescription, Snapshot
from tessera.placement.tasks import RunningTask
from tessera.placement.types import RESOURCE_NAMES, Reason

__all__ = [
    "RESOURCE_NAMES",
    "UNRESERVED",
    "AgentDescription",
    "Constraint",
    "ConstraintError",
    "Eviction",
    "Placement",
    "Plan",
    "Policy",
    "Reason",
    "Request",
    "RunningTask",
    "Snapshot",
    "Strategy",
    "Unplaced",
    "parse_constraints",
    "place",
]
