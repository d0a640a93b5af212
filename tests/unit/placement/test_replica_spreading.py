"""Replica spreading (Policy.spread_replicas): properties on random clusters.

Every instance that fits is placed (the rule is soft); while spreading is kept, no agent holds
more of an app than its level (`spread_level`: the instances over MIN_SPREAD agents, one each
when there are fewer); and a spread plan never needs more agents than the plain one plus
the tolerance (`engine.spread_allowance`: SPREAD_TOLERANCE or MIN_SPREAD - 1 more)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Policy, Request, Snapshot, place
from tessera.placement.engine import SMALL_CLUSTER, spread_allowance
from tessera.placement.pipeline import MIN_SPREAD, spread_level


def _agents(n: int, cpus: float) -> list[AgentDescription]:
    return [AgentDescription(f"a{i}", f"h{i}", Resources(cpus=cpus, mem=65536)) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(
    n_agents=st.integers(1, 12),
    instances=st.integers(1, 30),
    cpus=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_one_app_is_all_placed_and_spread_to_its_level(
    n_agents: int, instances: int, cpus: float
) -> None:
    capacity = 8.0
    snapshot = Snapshot.build(_agents(n_agents, capacity))
    plan = place(snapshot, [Request("/a", instances, Resources(cpus=cpus))])
    fit = int(n_agents * (capacity // cpus))
    assert len(plan.placements) == min(instances, fit)
    per_agent = Counter(p.agent_id for p in plan.placements)
    level = spread_level(instances, n_agents)
    if instances * cpus <= capacity * min(n_agents, MIN_SPREAD) / 2:
        # Room to spread without crowding: the level holds.
        assert max(per_agent.values()) <= level
    if instances > 1 and n_agents > 1 and instances * cpus <= capacity:
        assert len(per_agent) > 1, "a service that could spread sits on one agent"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 6), min_size=8, max_size=20), st.integers(0, 1000))
def test_spreading_costs_at_most_its_tolerance(counts: list[int], seed: int) -> None:
    requests = [
        Request(f"/app{i}", count, Resources(cpus=0.5 + (i + seed) % 3 * 0.5))
        for i, count in enumerate(counts)
    ]
    demand = sum(r.count * r.resources.cpus for r in requests)
    n_agents = math.ceil(demand / 8.0) + 4

    def used(policy: Policy) -> tuple[int, int]:
        plan = place(Snapshot.build(_agents(n_agents, 8.0)), requests, policy)
        return len(plan.placements), len({p.agent_id for p in plan.placements})

    placed, spread = used(Policy())
    plain_placed, plain = used(Policy(spread_replicas=False))
    assert placed == plain_placed == sum(counts)
    assert spread <= spread_allowance(plain)


def test_spreading_may_cost_two_agents_on_small_clusters_else_one_percent() -> None:
    assert spread_allowance(1) == MIN_SPREAD  # three instances on three agents
    assert spread_allowance(SMALL_CLUSTER) == SMALL_CLUSTER + MIN_SPREAD - 1
    assert spread_allowance(40) == 40  # below 100 agents 1% is no agent at all
    assert spread_allowance(500) == 505
