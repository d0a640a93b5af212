"""The engine end to end: group placement, binpack vs spread, snapshot reuse, numbering."""

from collections import Counter

import numpy as np

from tessera.model.resources import Resources
from tessera.placement import (
    AgentDescription,
    Plan,
    Policy,
    Request,
    RunningTask,
    Snapshot,
    Strategy,
    place,
    scoring,
)
from tessera.placement.context import Context
from tessera.placement.scorers import binpack_scorer


def agents(n: int, cpus: float = 4) -> list[AgentDescription]:
    return [AgentDescription(f"a{i}", f"h{i}", Resources(cpus=cpus, mem=4096)) for i in range(n)]


def per_agent(plan: Plan) -> Counter[str]:
    return Counter(p.agent_id for p in plan.placements)


def test_binpack_fills_agents_one_after_another() -> None:
    unspread = Policy(spread_replicas=False)
    plan = place(Snapshot.build(agents(4)), [Request("/x", 6, Resources(cpus=1))], unspread)
    assert sorted(per_agent(plan).values()) == [2, 4]


def test_replicas_of_one_app_spread_over_agents_by_default() -> None:
    # No agent holds more than the even level (6 over 4: 2), the fullest agents first.
    plan = place(Snapshot.build(agents(4)), [Request("/x", 6, Resources(cpus=1))])
    assert max(per_agent(plan).values()) == 2 and len(plan.placements) == 6
    three = place(Snapshot.build(agents(3)), [Request("/web", 3, Resources(cpus=0.1))])
    assert sorted(per_agent(three).values()) == [1, 1, 1]


def test_binpack_prefers_the_fuller_agent() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription("empty", "h0", Resources(cpus=4, mem=4096)),
            AgentDescription(
                "half", "h1", Resources(cpus=4, mem=4096), used=Resources(cpus=2, mem=2048)
            ),
        ]
    )
    plan = place(snapshot, [Request("/x", 1, Resources(cpus=1, mem=100))])
    assert plan.placements[0].agent_id == "half"


def test_spread_deals_tasks_evenly() -> None:
    plan = place(
        Snapshot.build(agents(4)), [Request("/x", 6, Resources(cpus=1))], Policy(Strategy.SPREAD)
    )
    assert sorted(per_agent(plan).values()) == [1, 1, 2, 2]


def test_spread_prefers_the_emptier_agent() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription(
                "half", "h1", Resources(cpus=4, mem=4096), used=Resources(cpus=2, mem=2048)
            ),
            AgentDescription("empty", "h0", Resources(cpus=4, mem=4096)),
        ]
    )
    plan = place(snapshot, [Request("/x", 1, Resources(cpus=1, mem=100))], Policy(Strategy.SPREAD))
    assert plan.placements[0].agent_id == "empty"


def test_gpu_agents_are_kept_for_gpu_tasks() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription(
                "gpu", "h0", Resources(cpus=4, mem=4096, gpus=1), used=Resources(cpus=3)
            ),
            AgentDescription("cpu", "h1", Resources(cpus=4, mem=4096)),
        ]
    )
    plan = place(
        snapshot, [Request("/x", 1, Resources(cpus=1)), Request("/g", 1, Resources(cpus=1, gpus=1))]
    )
    assert {p.key: p.agent_id for p in plan.placements} == {"/x": "cpu", "/g": "gpu"}


def test_the_snapshot_carries_placements_into_the_next_call() -> None:
    snapshot = Snapshot.build(agents(1))
    assert len(place(snapshot, [Request("/x", 3, Resources(cpus=1))]).placements) == 3
    second = place(snapshot, [Request("/x", 3, Resources(cpus=1))])
    assert len(second.placements) == 1
    assert float(snapshot.free[0, 0]) == 0.0


def test_instances_are_numbered_from_first_instance() -> None:
    plan = place(
        Snapshot.build(agents(2)), [Request("/x", 5, Resources(cpus=1), first_instance=10)]
    )
    assert [p.instance for p in plan.placements] == [10, 11, 12, 13, 14]


def test_empty_and_zero_requests() -> None:
    snapshot = Snapshot.build(agents(1))
    assert place(snapshot, []) == Plan()
    assert place(snapshot, [Request("/x", 0, Resources(cpus=1))]) == Plan()
    assert (
        place(Snapshot.build([]), [Request("/x", 1, Resources(cpus=1))]).unplaced[0].reasons == {}
    )


def test_tasks_without_resources_still_place() -> None:
    plan = place(Snapshot.build(agents(2)), [Request("/x", 3, Resources())])
    assert len(plan.placements) == 3


def test_score_cache_follows_changes_to_agents() -> None:
    snapshot = Snapshot.build(agents(3))
    request = Request("/x", 1, Resources(cpus=1))
    context = Context(snapshot, request, request.demand(), 1)
    scorer = binpack_scorer()
    rows = np.arange(3)
    before = scorer.scores(context, rows)
    assert before is not None
    snapshot.add_task(1, RunningTask("t", "/y", Resources(cpus=2)))
    after = scorer.scores(context, rows)
    fresh = scoring.binpack_scores(snapshot.free, snapshot.total, request.demand())
    assert after is not None
    assert np.allclose(after, fresh)
    assert after[1] > before[1]


def test_plan_to_json() -> None:
    plan = place(Snapshot.build(agents(1)), [Request("/x", 5, Resources(cpus=1))])
    data = plan.to_json()
    assert data["placements"][0] == {"app": "/x", "instance": 0, "agent": "a0", "ports": []}
    assert data["unplaced"] == [{"app": "/x", "count": 1, "reasons": {"InsufficientCpus": 1}}]
    assert data["evictions"] == []


def test_duplicate_agent_ids_are_rejected() -> None:
    import pytest

    with pytest.raises(ValueError, match="unique"):
        Snapshot.build(agents(1) * 2)


def test_instances_stay_numbered_from_first_instance_under_a_quota() -> None:
    policy = Policy(role_quotas={"dev": {"cpus": 2}})
    request = Request("/x", 5, Resources(cpus=1), role="dev", first_instance=3)
    plan = place(Snapshot.build(agents(2)), [request], policy)
    assert [p.instance for p in plan.placements] == [3, 4]


def test_replicas_prefer_distinct_zones_then_stack_when_they_must() -> None:
    zoned = [
        AgentDescription(f"a{i}", f"h{i}", Resources(cpus=4, mem=4096), {"zone": f"z{i % 2}"})
        for i in range(4)
    ]
    plan = place(Snapshot.build(zoned), [Request("/web", 2, Resources(cpus=1))])
    zones = {p.agent_id: int(p.agent_id[1:]) % 2 for p in plan.placements}
    assert sorted(zones.values()) == [0, 1]
    # A replacement instance goes where the app is not yet.
    snapshot = Snapshot.build(agents(3))
    first = place(snapshot, [Request("/web", 2, Resources(cpus=1))])
    again = place(snapshot, [Request("/web", 1, Resources(cpus=1), first_instance=2)])
    assert again.placements[0].agent_id not in {p.agent_id for p in first.placements}
    # Soft: on one agent with room, every instance still lands.
    crowded = place(Snapshot.build(agents(1)), [Request("/web", 3, Resources(cpus=1))])
    assert len(crowded.placements) == 3


def test_unique_groups_spread_evenly_so_the_batch_needs_no_extra_agent() -> None:
    from tessera.model.constraints import Constraint, Operator

    snapshot = Snapshot.build(
        AgentDescription(f"a{i}", f"h{i}", Resources(cpus=10, mem=10240)) for i in range(6)
    )
    unique = (Constraint("hostname", Operator.UNIQUE),)
    cpus = [7.0, 1.0, 2.0, 6.0, 2.0]
    counts = [1, 2, 3, 2, 1]
    requests = [
        Request(f"/u{i}", n, Resources(cpus=c, mem=c * 1024), constraints=unique)
        for i, (c, n) in enumerate(zip(cpus, counts, strict=True))
    ]
    plan = place(snapshot, requests, Policy(spread_replicas=False))
    assert plan.placed_count == sum(counts)
    assert len({p.agent_id for p in plan.placements}) == 3


def test_the_engine_follows_a_first_fit_plan() -> None:
    snapshot = Snapshot.build(
        AgentDescription(f"a{i}", f"h{i}", Resources(cpus=10, mem=10240)) for i in range(4)
    )
    shapes = [(4.0, 1.0, 2), (1.0, 3.0, 1), (1.0, 8.0, 1), (6.0, 6.0, 1)]
    requests = [
        Request(f"/r{i}", n, Resources(cpus=c, mem=m * 1024)) for i, (c, m, n) in enumerate(shapes)
    ]
    plan = place(snapshot, requests, Policy(spread_replicas=False))
    assert plan.placed_count == 5
    assert len({p.agent_id for p in plan.placements}) == 2


def test_the_engine_fills_with_the_slack_of_the_plan() -> None:
    snapshot = Snapshot.build(
        AgentDescription(f"a{i}", f"h{i}", Resources(cpus=10, mem=10240)) for i in range(4)
    )
    requests = [
        Request("/cpu", 2, Resources(cpus=6, mem=2048)),
        Request("/mixed", 2, Resources(cpus=4, mem=3072)),
    ]
    plan = place(snapshot, requests, Policy(spread_replicas=False))
    assert plan.placed_count == 4
    assert len({p.agent_id for p in plan.placements}) == 2
