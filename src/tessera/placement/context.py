"""What one request carries through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.placement.request import Request
from tessera.placement.scoring import Fit
from tessera.placement.snapshot import Snapshot
from tessera.placement.types import FloatArray


@dataclass(slots=True)
class Context:
    snapshot: Snapshot
    request: Request
    demand: FloatArray
    remaining: int
    """Tasks of the request still to place in this pass."""
    placed: int = 0
    """Tasks of the request placed so far (instances are numbered from it)."""
    balanced: bool = False
    """Binpack fills in two passes, first up to `scoring.binpack_copy_limits` per agent."""
    fit: Fit = Fit.BEST
    """Which agents binpack fills first."""
    slack: float | None = None
    """The balanced fill's slack (`scoring.binpack_copy_limits`; None: the default)."""
    required_ports: tuple[int, ...] = ()
    """Host ports the call's requests require: dynamic ports are drawn elsewhere first."""
