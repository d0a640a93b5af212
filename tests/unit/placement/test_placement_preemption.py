"""Preemption: a higher-priority request that fits nowhere evicts the fewest, lowest tasks."""

import numpy as np

from tessera.model.constraints import parse_constraints
from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Policy, Request, RunningTask, Snapshot, place
from tessera.placement.preemption import pick_victims


def task(name: str, cpus: float, priority: int, app: str = "/batch") -> RunningTask:
    return RunningTask(name, app, Resources(cpus=cpus, mem=10), priority=priority)


def agent(name: str, *tasks: RunningTask, cpus: float = 4, **extra: object) -> AgentDescription:
    return AgentDescription(name, f"h-{name}", Resources(cpus=cpus, mem=1024), tasks=tasks, **extra)  # type: ignore[arg-type]


def test_pick_victims_prefers_fewest_tasks() -> None:
    free = np.array([0.0, 100, 0, 0])
    need = np.array([2.0, 0, 0, 0])
    demands = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [2.0, 0, 0, 0]])
    priorities = np.array([0, 0, 5])
    assert pick_victims(free, need, demands, priorities) == [2]


def test_pick_victims_prefers_lowest_priority_among_equally_few() -> None:
    free = np.array([0.0, 0, 0, 0])
    need = np.array([1.0, 0, 0, 0])
    demands = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert pick_victims(free, need, demands, np.array([5, 1])) == [1]


def test_pick_victims_gives_back_what_is_not_needed() -> None:
    free = np.array([0.5, 0, 0, 0])
    need = np.array([2.0, 0, 0, 0])
    demands = np.array([[0.5, 0, 0, 0], [1.5, 0, 0, 0]])
    assert pick_victims(free, need, demands, np.array([0, 1])) == [1]


def test_pick_victims_none_when_not_enough() -> None:
    assert (
        pick_victims(
            np.zeros(4), np.array([3.0, 0, 0, 0]), np.array([[1.0, 0, 0, 0]]), np.array([0])
        )
        is None
    )


def test_high_priority_request_evicts_lower_priority_tasks() -> None:
    snapshot = Snapshot.build(
        [
            agent("a", task("t1", 2, 1), task("t2", 2, 1)),
            agent("b", task("t3", 1, 0), task("t4", 1, 0), task("t5", 2, 0)),
        ]
    )
    plan = place(snapshot, [Request("/web", 1, Resources(cpus=2, mem=10), priority=10)])
    assert len(plan.placements) == 1
    # One eviction suffices on either agent; the lowest priority one is on b (t5).
    assert [(e.task_id, e.agent_id, e.for_key) for e in plan.evictions] == [("t5", "b", "/web")]
    assert plan.placements[0].agent_id == "b"
    assert float(snapshot.free[snapshot.index["b"], 0]) == 0.0


def test_equal_or_higher_priority_tasks_are_never_evicted() -> None:
    snapshot = Snapshot.build([agent("a", task("t1", 4, 10))])
    plan = place(snapshot, [Request("/web", 1, Resources(cpus=2), priority=10)])
    assert plan.evictions == ()
    assert plan.unplaced[0].reasons == {"InsufficientCpus": 1}


def test_preemption_can_be_switched_off() -> None:
    snapshot = Snapshot.build([agent("a", task("t1", 4, 0))])
    plan = place(
        snapshot, [Request("/web", 1, Resources(cpus=2), priority=10)], Policy(preemption=False)
    )
    assert plan.evictions == ()
    assert plan.unplaced[0].count == 1


def test_preemption_respects_constraints_and_states() -> None:
    snapshot = Snapshot.build(
        [
            agent("a", task("t1", 4, 0), attributes={"zone": "a"}),
            agent("b", task("t2", 4, 0), attributes={"zone": "b"}),
        ]
    )
    constraints = parse_constraints([["zone", "IS", "b"]])
    plan = place(
        snapshot, [Request("/web", 1, Resources(cpus=4), constraints=constraints, priority=5)]
    )
    assert [e.task_id for e in plan.evictions] == ["t2"]


def test_evicting_several_tasks_for_several_copies() -> None:
    snapshot = Snapshot.build([agent("a", *(task(f"t{i}", 1, i) for i in range(4)))])
    plan = place(snapshot, [Request("/web", 2, Resources(cpus=1), priority=10)])
    assert sorted(e.task_id for e in plan.evictions) == ["t0", "t1"]
    assert len(plan.placements) == 2
