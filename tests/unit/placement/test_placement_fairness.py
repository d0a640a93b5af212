"""Dominant resource fairness, weights, quotas and priorities, with plain numbers."""

import numpy as np
import pytest

from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Policy, Request, Snapshot, place
from tessera.placement.fairness import Sorter, quota_copies
from tessera.placement.types import UNLIMITED


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def test_sorter_orders_by_dominant_share() -> None:
    sorter = Sorter(vec(100, 1000, 0, 0))
    sorter.add("a", vec(5, 10, 0, 0))  # dominant share .05 (cpus)
    sorter.add("b", vec(1, 60, 0, 0))  # dominant share .06 (mem)
    assert sorter.sort() == ["a", "b"]
    assert sorter.share("a") == pytest.approx(0.05)
    assert sorter.share("b") == pytest.approx(0.06)


def test_sorter_allocation_changes_the_order() -> None:
    sorter = Sorter(vec(100, 1000, 0, 0))
    sorter.add("a", vec(5, 10, 0, 0))
    sorter.add("b", vec(1, 60, 0, 0))
    sorter.allocated("a", vec(2, 0, 0, 0))
    assert sorter.sort() == ["b", "a"]
    sorter.allocated("a", vec(-7, -10, 0, 0))
    assert sorter.share("a") == 0.0
    assert sorter.sort() == ["a", "b"]


def test_sorter_weights_divide_the_share() -> None:
    sorter = Sorter(vec(100, 1000, 0, 0), {"a": 2.0})
    sorter.add("a", vec(10, 0, 0, 0))  # .10 / 2 = .05
    sorter.add("b", vec(6, 0, 0, 0))  # .06
    assert sorter.sort() == ["a", "b"]


def test_sorter_ties_go_by_name_and_empty_resources_are_ignored() -> None:
    sorter = Sorter(vec(10, 0, 0, 0))
    sorter.add("b")
    sorter.add("a")
    assert sorter.sort() == ["a", "b"]
    assert Sorter(vec(0, 0, 0, 0)).share("x") == 0.0


def test_quota_copies() -> None:
    inf = np.inf
    assert quota_copies(vec(10, inf, inf, inf), vec(7, 0, 0, 0), vec(1, 50, 0, 0)) == 3
    assert quota_copies(vec(10, 100, inf, inf), vec(0, 60, 0, 0), vec(1, 50, 0, 0)) == 0
    assert quota_copies(vec(10, 100, inf, inf), vec(12, 0, 0, 0), vec(1, 0, 0, 0)) == 0
    assert quota_copies(vec(inf, inf, inf, inf), vec(0, 0, 0, 0), vec(1, 1, 0, 0)) == UNLIMITED
    assert quota_copies(vec(0.3, inf, inf, inf), vec(0, 0, 0, 0), vec(0.1, 0, 0, 0)) == 3


def one_agent(cpus: float) -> Snapshot:
    return Snapshot.build([AgentDescription("a", "h", Resources(cpus=cpus, mem=1 << 20))])


def test_contended_cluster_is_shared_in_drf_order() -> None:
    # 10 cpus; two roles each ask for 10 single-cpu tasks, one task per request.
    requests = [
        Request(f"/{role}/{i}", 1, Resources(cpus=1), role=role)
        for role in ("a", "b")
        for i in range(10)
    ]
    plan = place(one_agent(10), requests)
    roles = [p.key.split("/")[1] for p in plan.placements]
    assert roles.count("a") == roles.count("b") == 5


def test_weights_give_a_larger_share() -> None:
    requests = [
        Request(f"/{role}/{i}", 1, Resources(cpus=1), role=role)
        for role in ("a", "b")
        for i in range(12)
    ]
    plan = place(one_agent(12), requests, Policy(role_weights={"a": 2.0}))
    roles = [p.key.split("/")[1] for p in plan.placements]
    assert roles.count("a") == 8 and roles.count("b") == 4


def test_quota_limits_a_role_but_not_the_others() -> None:
    requests = [
        Request("/dev/x", 5, Resources(cpus=1), role="dev"),
        Request("/prod/y", 5, Resources(cpus=1), role="prod"),
    ]
    plan = place(one_agent(10), requests, Policy(role_quotas={"dev": {"cpus": 2}}))
    assert sum(p.key == "/dev/x" for p in plan.placements) == 2
    assert sum(p.key == "/prod/y" for p in plan.placements) == 5
    assert plan.unplaced[0].reasons == {"QuotaExceeded": 1}


def test_quota_includes_what_the_role_already_runs() -> None:
    from tessera.placement import RunningTask

    running = (RunningTask("t", "/dev/old", Resources(cpus=2), role="dev"),)
    snapshot = Snapshot.build(
        [AgentDescription("a", "h", Resources(cpus=10, mem=1024), tasks=running)]
    )
    plan = place(
        snapshot,
        [Request("/dev/x", 5, Resources(cpus=1), role="dev")],
        Policy(role_quotas={"dev": {"cpus": 3}}),
    )
    assert len(plan.placements) == 1


def test_higher_priority_goes_first() -> None:
    requests = [
        Request("/low", 1, Resources(cpus=6), priority=0),
        Request("/high", 1, Resources(cpus=6), priority=10),
    ]
    plan = place(one_agent(10), requests, Policy(preemption=False))
    assert [p.key for p in plan.placements] == ["/high"]
    assert plan.unplaced[0].key == "/low"


def test_equal_priority_largest_first() -> None:
    requests = [Request("/small", 4, Resources(cpus=1)), Request("/large", 1, Resources(cpus=8))]
    plan = place(one_agent(10), requests)
    assert plan.placements[0].key == "/large"
    assert len(plan.placements) == 3
