"""The rebalance planner: what it frees, what it never moves, and the waves it orders."""

from __future__ import annotations

import pytest

from tessera.model.constraints import Constraint, Operator
from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Request, RunningTask, Snapshot
from tessera.placement.rebalance import Move, MoveRules, plan_rebalance, schedule_waves

AGENT = Resources(cpus=4, mem=4096, ports=(PortRange(31000, 31010),))
SMALL = Resources(cpus=1, mem=512)


def cluster(layout: dict[str, list[tuple[str, str]]]) -> Snapshot:
    """Agents by id, each with (app, task id) tasks of one SMALL shape."""
    return Snapshot.build(
        AgentDescription(
            agent,
            agent,
            AGENT,
            {"rack": f"r{i % 2}"},
            tasks=tuple(RunningTask(task, app, SMALL) for app, task in tasks),
        )
        for i, (agent, tasks) in enumerate(layout.items())
    )


def rules_for(*apps: tuple[str, int], **options: object) -> dict[str, MoveRules]:
    return {
        app: MoveRules(Request(app, 1, SMALL), n, **options)  # type: ignore[arg-type]
        for app, n in apps
    }


def test_frees_the_cheapest_agents_into_holes() -> None:
    snapshot = cluster(
        {
            "a": [("/x", "x.0"), ("/y", "y.0")],
            "b": [("/x", "x.1")],
            "c": [("/z", "z.0"), ("/z", "z.1")],
        }
    )
    before = snapshot.free.copy()
    rules = rules_for(("/x", 2), ("/y", 1), ("/z", 2))
    plan = plan_rebalance(snapshot, rules, spread=False)
    assert plan.freed == ("b",)
    assert [(m.task_id, m.source) for m in plan.moves] == [("x.1", "b")]
    assert plan.moves[0].target == "c"  # not a: /x would be all on one agent
    assert (plan.agents_before, plan.agents_after, plan.lower_bound) == (3, 2, 2)
    assert plan.minimum_moves == 1 and plan.reason is None
    assert (snapshot.free == before).all()  # the caller's snapshot is untouched
    assert plan.to_json()["moves"] == [{"app": "/x", "instance": "x.1", "from": "b", "to": "c"}]


def test_an_app_on_one_agent_gets_an_instance_moved_first() -> None:
    snapshot = cluster({"a": [("/x", "x.0"), ("/y", "y.0")], "c": [("/z", "z.0"), ("/z", "z.1")]})
    plan = plan_rebalance(snapshot, rules_for(("/x", 1), ("/y", 1), ("/z", 2)))
    assert [(m.task_id, m.source, m.target) for m in plan.moves] == [("z.0", "c", "a")]
    assert plan.freed == ()


def test_nothing_to_gain_moves_nothing_and_says_so() -> None:
    snapshot = cluster({"a": [("/x", "x.0")], "b": []})
    plan = plan_rebalance(snapshot, rules_for(("/x", 1)))
    assert plan.moves == () and plan.waves == ()
    assert plan.reason == "nothing to gain: 1 agents in use, the lower bound is 1"
    assert plan.to_json()["reason"] == plan.reason


def test_opt_out_pinned_and_rule_less_apps_never_move() -> None:
    layout = {"a": [("/x", "x.0")], "b": [("/y", "y.0")], "c": [("/z", "z.0")], "d": []}
    rules = rules_for(("/x", 1)) | {"/y": MoveRules(Request("/y", 1, SMALL), 1, movable=False)}
    plan = plan_rebalance(cluster(layout), rules, pinned={"x.0"})
    assert plan.moves == ()
    assert plan.reason is not None and plan.reason.startswith("no agent can be emptied")
    assert "opted out" in plan.blocked["y.0"] and "pinned" in plan.blocked["x.0"]
    assert "no move rules" in plan.blocked["z.0"]


def test_an_app_without_budget_cannot_move() -> None:
    snapshot = cluster({"a": [("/x", "x.0")], "b": [("/y", "y.0")]})
    rules = rules_for(("/y", 1)) | {
        "/x": MoveRules(Request("/x", 1, SMALL), 1, 1.0, maximum_over_capacity=0.0)
    }
    plan = plan_rebalance(snapshot, rules)
    assert [m.task_id for m in plan.moves] == ["y.0"]
    assert "upgradeStrategy" in plan.blocked["x.0"]


def test_max_moves_caps_the_plan() -> None:
    layout = {f"a{i}": [("/x", f"x.{i}")] for i in range(4)}
    rules = rules_for(("/x", 4))
    assert len(plan_rebalance(cluster(layout), rules, max_moves=1).moves) == 1
    plan = plan_rebalance(cluster(layout), rules, max_moves=0)
    assert plan.moves == () and plan.reason == "max_moves is 0: nothing may move"
    with pytest.raises(ValueError, match="max_moves"):
        plan_rebalance(cluster(layout), rules, max_moves=-1)


def test_unique_is_kept_while_both_copies_run() -> None:
    unique = Request("/u", 1, SMALL, constraints=(Constraint("hostname", Operator.UNIQUE),))
    layout = {"a": [("/u", "u.0")], "b": [("/u", "u.1"), ("/v", "v.0")], "c": [("/v", "v.1")]}
    rules = {"/u": MoveRules(unique, 2), **rules_for(("/v", 2))}
    plan = plan_rebalance(cluster(layout), rules)
    assert all(not (m.app_id == "/u" and m.target == "b") for m in plan.moves)
    assert "a" not in plan.freed or any(m.target == "c" for m in plan.moves)


def test_waves_respect_each_apps_budget_and_the_wave_cap() -> None:
    layout = {f"a{i}": [("/x", f"x.{i}")] for i in range(6)} | {"big": []}
    snapshot = cluster(layout)
    rules = {"/x": MoveRules(Request("/x", 1, SMALL), 6, 1.0, maximum_over_capacity=0.34)}
    moves = [Move("/x", f"x.{i}", f"a{i}", "a5") for i in range(3)]
    waves = schedule_waves(moves, snapshot, rules)  # surge floor(6 x 1.34) - 6 = 2
    assert [len(w) for w in waves] == [1, 1, 1]  # the default cap: 5% of 6 -> 1
    waves = schedule_waves(moves, snapshot, rules, wave_moves=10)
    assert [len(w) for w in waves] == [2, 1]


def test_room_being_freed_is_used_only_by_a_later_wave() -> None:
    full = Resources(cpus=4, mem=512)
    snapshot = Snapshot.build(
        [
            AgentDescription("a", "a", AGENT, tasks=(RunningTask("x.0", "/x", full),)),
            AgentDescription("b", "b", AGENT, tasks=(RunningTask("y.0", "/y", full),)),
            AgentDescription("c", "c", AGENT),
        ]
    )
    rules = {
        "/x": MoveRules(Request("/x", 1, full), 1),
        "/y": MoveRules(Request("/y", 1, full), 1),
    }
    # x goes where y is; y leaves first to an empty agent.
    moves = [Move("/x", "x.0", "a", "b"), Move("/y", "y.0", "b", "c")]
    waves = schedule_waves(moves, snapshot, rules, wave_moves=10)
    assert waves == ((moves[1],), (moves[0],))
    with pytest.raises(ValueError, match="moves twice"):
        schedule_waves([moves[0], moves[0]], snapshot, rules)
    with pytest.raises(ValueError, match="never has room"):
        schedule_waves([Move("/x", "x.0", "a", "b")], snapshot, rules)
