"""Marathon constraint operators through `place()`: where tasks may and may not go."""

from collections import Counter

from tessera.model.constraints import parse_constraints
from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Plan, Policy, Request, RunningTask, Snapshot, place


def cluster(
    zones: str, cpus: float = 8, hosts: list[str] | None = None, **tasks: tuple[RunningTask, ...]
) -> Snapshot:
    """One agent per letter of `zones` (agent i in zone zones[i], rack r<i>)."""
    return Snapshot.build(
        AgentDescription(
            f"a{i}",
            hosts[i] if hosts else f"h{i}",
            Resources(cpus=cpus, mem=65536),
            {"zone": zone, "rack": f"r{i}"},
            tasks=tasks.get(f"a{i}", ()),
        )
        for i, zone in enumerate(zones)
    )


def request(count: int, *constraints: list[str], cpus: float = 1, key: str = "/app") -> Request:
    return Request(
        key, count, Resources(cpus=cpus, mem=16), constraints=parse_constraints(list(constraints))
    )


def per(plan: Plan, snapshot: Snapshot, attribute: str) -> Counter[str]:
    column = snapshot.attribute(attribute)
    return Counter(column.values[column.codes[snapshot.index[p.agent_id]]] for p in plan.placements)


def test_unique_hostname_one_task_per_host_even_with_two_agents_on_a_host() -> None:
    snapshot = cluster("aaa", hosts=["h0", "h0", "h1"])
    plan = place(snapshot, [request(3, ["hostname", "UNIQUE"])])
    assert sorted(per(plan, snapshot, "hostname").values()) == [1, 1]
    assert plan.unplaced[0].count == 1


def test_unique_attribute_one_task_per_value() -> None:
    snapshot = cluster("aabbc")
    plan = place(snapshot, [request(5, ["zone", "UNIQUE"])])
    assert per(plan, snapshot, "zone") == {"a": 1, "b": 1, "c": 1}


def test_unique_counts_tasks_already_running() -> None:
    running = (RunningTask("t0", "/app", Resources(cpus=1)),)
    snapshot = cluster("ab", a0=running)
    plan = place(snapshot, [request(2, ["zone", "UNIQUE"])])
    assert [p.agent_id for p in plan.placements] == ["a1"]


def test_cluster_with_value_only_on_that_value() -> None:
    snapshot = cluster("abab")
    plan = place(snapshot, [request(4, ["zone", "CLUSTER", "b"])])
    assert per(plan, snapshot, "zone") == {"b": 4}


def test_cluster_without_value_picks_one_value_and_keeps_it() -> None:
    snapshot = cluster("abb", cpus=2)
    first = place(snapshot, [request(3, ["zone", "CLUSTER"])])
    assert per(first, snapshot, "zone") == {"b": 3}
    second = place(snapshot, [request(3, ["zone", "CLUSTER"])])
    assert per(second, snapshot, "zone") == {"b": 1}
    assert second.unplaced[0].count == 2


def test_group_by_spreads_evenly_whatever_the_agent_order() -> None:
    for zones in ("aaaabc", "cbaaaa", "abacaa"):
        snapshot = cluster(zones)
        plan = place(snapshot, [request(9, ["zone", "GROUP_BY"])])
        assert per(plan, snapshot, "zone") == {"a": 3, "b": 3, "c": 3}, zones


def test_group_by_evens_out_what_already_runs() -> None:
    running = tuple(RunningTask(f"t{i}", "/app", Resources(cpus=1)) for i in range(3))
    snapshot = cluster("abc", a0=running)
    plan = place(snapshot, [request(3, ["zone", "GROUP_BY"])])
    assert per(plan, snapshot, "zone") == {"b": 2, "c": 1} or per(plan, snapshot, "zone") == {
        "b": 1,
        "c": 2,
    }


def test_group_by_with_expected_count_counts_missing_values_as_empty_groups() -> None:
    snapshot = cluster("ab")
    plan = place(snapshot, [request(6, ["zone", "GROUP_BY", "3"])])
    assert per(plan, snapshot, "zone") == {"a": 2, "b": 2}
    assert plan.unplaced[0].count == 2


def test_group_by_stays_even_when_a_value_is_full() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription("small", "h0", Resources(cpus=1, mem=1024), {"zone": "a"}),
            AgentDescription("big1", "h1", Resources(cpus=8, mem=1024), {"zone": "b"}),
            AgentDescription("big2", "h2", Resources(cpus=8, mem=1024), {"zone": "c"}),
        ]
    )
    plan = place(snapshot, [request(6, ["zone", "GROUP_BY"])])
    counts = per(plan, snapshot, "zone")
    assert counts["a"] == 1
    assert max(counts.values()) - min(counts.values()) <= 1


def test_like_is_a_full_match() -> None:
    snapshot = cluster("a" * 12)
    plan = place(snapshot, [request(12, ["rack", "LIKE", "r1"])])
    assert {p.agent_id for p in plan.placements} == {"a1"}


def test_like_regex() -> None:
    snapshot = cluster("a" * 12)
    plan = place(snapshot, [request(12, ["rack", "LIKE", "r1[01]"], cpus=8)])
    assert {p.agent_id for p in plan.placements} == {"a10", "a11"}


def test_unlike_excludes_matches_and_accepts_agents_without_the_attribute() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription("a0", "h0", Resources(cpus=1, mem=64), {"rack": "r1"}),
            AgentDescription("a1", "h1", Resources(cpus=1, mem=64), {"rack": "r2"}),
            AgentDescription("a2", "h2", Resources(cpus=1, mem=64)),
        ]
    )
    plan = place(snapshot, [request(3, ["rack", "UNLIKE", "r1"])])
    assert {p.agent_id for p in plan.placements} == {"a1", "a2"}


def test_like_rejects_agents_without_the_attribute() -> None:
    snapshot = Snapshot.build([AgentDescription("a0", "h0", Resources(cpus=1, mem=64))])
    plan = place(snapshot, [request(1, ["rack", "LIKE", ".*"])])
    assert plan.placements == ()


def test_max_per_counts_running_tasks() -> None:
    running = (RunningTask("t0", "/app", Resources(cpus=1)),)
    snapshot = cluster("aab", a0=running)
    plan = place(snapshot, [request(5, ["zone", "MAX_PER", "2"])])
    assert per(plan, snapshot, "zone") == {"a": 1, "b": 2}


def test_max_per_other_apps_do_not_count() -> None:
    running = (RunningTask("t0", "/other", Resources(cpus=1)),)
    snapshot = cluster("a", a0=running)
    plan = place(snapshot, [request(3, ["hostname", "MAX_PER", "2"])])
    assert len(plan.placements) == 2


def test_is_exact_value_and_numbers_at_a_thousandth() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription("a0", "h0", Resources(cpus=1, mem=64), {"level": "2.0001"}),
            AgentDescription("a1", "h1", Resources(cpus=1, mem=64), {"level": "2"}),
            AgentDescription("a2", "h2", Resources(cpus=1, mem=64), {"level": "2.5"}),
            AgentDescription("a3", "h3", Resources(cpus=1, mem=64), {"level": "20"}),
        ]
    )
    plan = place(snapshot, [request(4, ["level", "IS", "2"])])
    assert {p.agent_id for p in plan.placements} == {"a0", "a1"}


def test_zone_and_region_fields_read_attributes() -> None:
    snapshot = cluster("ab")
    plan = place(snapshot, [request(2, ["@zone", "CLUSTER", "b"])])
    assert {p.agent_id for p in plan.placements} == {"a1"}


def test_several_constraints_all_hold() -> None:
    snapshot = cluster("aabbcc")
    plan = place(snapshot, [request(6, ["zone", "MAX_PER", "1"], ["rack", "UNLIKE", "r[02]"])])
    agents = {p.agent_id for p in plan.placements}
    assert len(agents) == len(plan.placements) == 3
    assert agents <= {"a1", "a3", "a4", "a5"}
    assert per(plan, snapshot, "zone") == {"a": 1, "b": 1, "c": 1}


def test_app_id_lets_requests_of_one_app_share_counts() -> None:
    snapshot = cluster("aa")
    requests = [
        Request(
            f"task-{i}",
            1,
            Resources(cpus=1),
            constraints=parse_constraints([["hostname", "UNIQUE"]]),
            app_id="/app",
        )
        for i in range(3)
    ]
    plan = place(snapshot, requests, Policy())
    assert len({p.agent_id for p in plan.placements}) == len(plan.placements) == 2


def test_group_by_with_max_per_host_uses_every_allowed_agent() -> None:
    snapshot = cluster("aabb", cpus=8)
    plan = place(snapshot, [request(8, ["zone", "GROUP_BY"], ["hostname", "MAX_PER", "2"])])
    assert per(plan, snapshot, "zone") == {"a": 4, "b": 4}
    assert set(per(plan, snapshot, "hostname").values()) == {2}


def test_two_grouped_limits_together() -> None:
    # Racks span zones: rack x = {a0, a2}, rack y = {a1, a3}; zones a = {a0, a1}, b = {a2, a3}.
    snapshot = Snapshot.build(
        AgentDescription(f"a{i}", f"h{i}", Resources(cpus=8, mem=1024), {"zone": z, "rack": r})
        for i, (z, r) in enumerate(["ax", "ay", "bx", "by"])
    )
    plan = place(snapshot, [request(8, ["zone", "GROUP_BY"], ["rack", "MAX_PER", "3"])])
    assert len(plan.placements) == 6
    assert per(plan, snapshot, "zone") == {"a": 3, "b": 3}
    assert per(plan, snapshot, "rack") == {"x": 3, "y": 3}
