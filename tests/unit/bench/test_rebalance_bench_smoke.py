"""The rebalancer benchmark's quick mode runs and reports every policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import rebalance  # noqa: E402


def test_quick_mode_compares_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert rebalance.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for policy in rebalance.POLICIES:
        assert f"| {policy} |" in out
    assert "goals:" in out


def test_no_policy_goes_below_the_lower_bound() -> None:
    result = rebalance.run_seed(1, 40, ["greedy", "tessera"])
    for outcome in result.outcomes.values():
        assert result.bound <= outcome.agents <= result.before
    assert result.outcomes["tessera"].stacked == 0
