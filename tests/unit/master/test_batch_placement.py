"""The master's placement call: queued tasks of one shape grouped into one request, priorities
and role weights reaching the engine, preemption turned into victims and a waiting preemptor,
and tasks already being killed never chosen as victims again."""

from __future__ import annotations

from tessera.master.placement_adapter import (
    build_snapshot,
    group_requests,
    place_tasks,
    policy_for,
)
from tessera.master.quotas import Quota
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.testing.placement import FakeQuotas, active_agent


def _task(
    task_id: str,
    app: str = "/web",
    cpus: float = 1.0,
    priority: int = 0,
    role: str = "*",
    state: TaskState = TaskState.TASK_QUEUED,
    agent: str | None = None,
) -> Task:
    spec = TaskSpec(name="t", cmd="x", cpus=cpus, mem=32, app_id=app, priority=priority, role=role)
    return Task(task_id, spec, state, 0.0, 0.0, agent_id=agent)


def test_tasks_of_one_shape_become_one_request_in_queue_order() -> None:
    queued = [
        _task("web.1"),
        _task("db.1", app="/db", cpus=2),
        _task("web.2"),
        _task("web.3", cpus=0.5),  # another version of /web: its own request
        _task("web.4"),
    ]
    requests, members = group_requests(queued)
    assert [(r.key, r.count) for r in requests] == [("web.1", 3), ("db.1", 1), ("web.3", 1)]
    assert [t.id for t in members["web.1"]] == ["web.1", "web.2", "web.4"]


def test_a_batch_is_placed_in_one_call_and_maps_back_to_tasks() -> None:
    snapshot = build_snapshot([active_agent("a1"), active_agent("a2")], {})
    # 8 cpus asked of 8: only a plan that sees the whole batch fits the 3-cpu task.
    queued = [_task(f"web.{i}") for i in range(5)] + [_task("big.1", app="/big", cpus=3)]
    result = place_tasks(snapshot, queued)
    placed = {a.task_id: a.agent_id for a in result.assignments}
    assert len(placed) == 6 and not result.unplaced


def test_what_does_not_fit_stays_queued_task_by_task() -> None:
    snapshot = build_snapshot([active_agent("a1", cpus=2)], {})
    result = place_tasks(snapshot, [_task(f"web.{i}") for i in range(3)])
    assert [a.task_id for a in result.assignments] == ["web.0", "web.1"]
    assert set(result.unplaced) == {"web.2"}
    assert result.unplaced["web.2"]["InsufficientCpus"] == 1


def test_a_higher_priority_evicts_and_waits_for_its_victims() -> None:
    running = [
        _task(f"low.{i}", app="/low", state=TaskState.TASK_RUNNING, agent="a1") for i in range(4)
    ]
    snapshot = build_snapshot([active_agent("a1")], {"a1": running})
    result = place_tasks(snapshot, [_task("high.1", app="/high", cpus=2, priority=10)])
    assert not result.assignments
    [preemption] = result.preemptions
    assert preemption.task_id == "high.1" and preemption.agent_id == "a1"
    assert len(preemption.victims) == 2 and set(preemption.victims) <= {t.id for t in running}


def test_equal_priorities_and_tasks_being_killed_are_never_victims() -> None:
    running = [
        _task("low.0", app="/low", state=TaskState.TASK_KILLING, agent="a1", cpus=2),
        _task("peer.0", app="/peer", state=TaskState.TASK_RUNNING, agent="a1", cpus=2, priority=5),
    ]
    snapshot = build_snapshot([active_agent("a1")], {"a1": running})
    result = place_tasks(snapshot, [_task("high.1", app="/high", cpus=2, priority=5)])
    assert not result.preemptions and not result.assignments
    assert "high.1" in result.unplaced


def test_role_weights_come_from_the_quotas() -> None:
    policy = policy_for({"team-a": Quota("team-a", weight=3.0), "team-b": Quota("team-b")})
    assert dict(policy.role_weights) == {"team-a": 3.0}
    # Two roles competing for a full cluster: the weighted role gets three times the share.
    snapshot = build_snapshot([active_agent("a1", cpus=8)], {})
    queued = [_task(f"a.{i}", app="/a", role="team-a") for i in range(8)]
    queued += [_task(f"b.{i}", app="/b", role="team-b") for i in range(8)]
    quotas = FakeQuotas(Quota("team-a", weight=3.0), Quota("team-b"))
    result = place_tasks(snapshot, queued, quotas)
    roles = [a.task_id[0] for a in result.assignments]
    assert roles.count("a") == 6 and roles.count("b") == 2
