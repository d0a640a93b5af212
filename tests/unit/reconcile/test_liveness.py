"""The outage count and the replacement throttle, with plain numbers."""

from __future__ import annotations

from tessera.reconcile.liveness import Outage, outage, recently_lost, replacement_throttled


def test_outage_counts_marked_and_overdue_agents() -> None:
    seen = {"a": 99.0, "b": 97.0, "c": 99.5}
    assert outage(["x", "y"], seen, now=100.0, overdue_after=1.5) == Outage(3, 5, marked=2)


def test_outage_of_an_empty_cluster_is_nothing() -> None:
    current = outage([], {}, now=0.0, overdue_after=1.0)
    assert current == Outage(0, 0) and current.fraction == 0.0


def test_throttled_only_above_the_fraction() -> None:
    assert not replacement_throttled(Outage(out=4, total=10, marked=4), 0.4)
    assert replacement_throttled(Outage(out=5, total=10, marked=1), 0.4)
    assert replacement_throttled(Outage(out=10, total=10, marked=10), 0.4)


def test_one_or_two_agents_out_never_throttle() -> None:
    assert not replacement_throttled(Outage(out=1, total=2, marked=1), 0.4)
    assert not replacement_throttled(Outage(out=2, total=3, marked=2), 0.4)
    assert replacement_throttled(Outage(out=3, total=3, marked=3), 0.4)


def test_overdue_agents_alone_never_throttle() -> None:
    """A master that stalled sees every agent late; nothing is unreachable yet."""
    assert not replacement_throttled(Outage(out=10, total=10, marked=0), 0.4)


def test_fraction_one_turns_the_throttle_off() -> None:
    assert not replacement_throttled(Outage(out=100, total=100, marked=100), 1.0)


def test_agents_lost_long_ago_are_forgotten() -> None:
    lost = {"old": 100.0, "new": 650.0, "unknown": None}
    assert recently_lost(lost, now=800.0, memory=600.0) == ["new", "unknown"]
