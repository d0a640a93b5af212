"""The master packs a batch as `tessera simulate` does: a small workload of the placement
benchmark submitted as Marathon apps (one group) to a real master with simulated agents
uses as many agents as `tessera simulate` on the same files (bench/placement_live.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.placement_live import run_live  # noqa: E402


def test_a_batch_through_the_master_uses_the_simulators_agents() -> None:
    (row,) = run_live(1, 40)
    assert row.tasks > 40 and row.bound > 0
    assert row.batch == row.simulated, row
    assert row.one_by_one is not None and row.one_by_one >= row.bound
    assert not row.notes, row.notes
