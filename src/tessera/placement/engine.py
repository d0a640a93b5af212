"""`place()`: serve requests by priority and fair share, each through the pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.placement.plan import Plan
from tessera.placement.request import Policy, Request
from tessera.placement.snapshot import Snapshot


def place(snapshot: Snapshot, requests: Sequence[Request], policy: Policy | None = None) -> Plan:
    """Place every request it can; mutates `snapshot` to include the plan."""
    raise NotImplementedError
