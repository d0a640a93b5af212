"""Placement within role quotas: resource limits through the engine, instance and app limits
held back by the adapter, and QuotaExceeded on whatever a quota keeps queued."""

from __future__ import annotations

from tessera.master.placement_adapter import (
    MASTER_POLICY,
    build_snapshot,
    place_tasks,
    policy_for,
    within_counts,
)
from tessera.master.quotas import Ledger, Quota
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.testing.placement import FakeQuotas, active_agent


def _task(
    task_id: str,
    role: str = "team-a",
    app: str | None = "/team-a/web",
    cpus: float = 0.5,
    state: TaskState = TaskState.TASK_QUEUED,
    priority: int = 0,
) -> Task:
    agent = "a1" if state is not TaskState.TASK_QUEUED else None
    return Task(
        task_id,
        TaskSpec(
            name="web", cmd="serve", cpus=cpus, mem=32, app_id=app, role=role, priority=priority
        ),
        state,
        0.0,
        0.0,
        agent_id=agent,
    )


def test_without_quotas_the_master_policy_is_used_as_before() -> None:
    assert policy_for({}) is MASTER_POLICY
    assert policy_for({"team-a": Quota("team-a", instances=3)}) is MASTER_POLICY
    limited = policy_for({"team-a": Quota("team-a", cpus=1)})
    assert dict(limited.role_quotas) == {"team-a": {"cpus": 1}}
    assert limited.lookahead_budget == MASTER_POLICY.lookahead_budget


def test_a_cpu_quota_keeps_the_third_half_cpu_instance_queued() -> None:
    snapshot = build_snapshot([active_agent("a1")], {})
    quotas = FakeQuotas(Quota("team-a", cpus=1))
    result = place_tasks(snapshot, [_task("t1"), _task("t2"), _task("t3")], quotas)
    assert sorted(a.task_id for a in result.assignments) == ["t1", "t2"]
    assert result.unplaced["t3"] == {"QuotaExceeded": 1}


def test_running_tasks_count_against_the_quota() -> None:
    running = _task("r1", cpus=0.75, state=TaskState.TASK_RUNNING)
    snapshot = build_snapshot([active_agent("a1")], {"a1": [running]})
    result = place_tasks(snapshot, [_task("t1")], FakeQuotas(Quota("team-a", cpus=1)))
    assert result.assignments == []
    assert "QuotaExceeded" in result.unplaced["t1"]


def test_other_roles_are_not_limited_by_a_teams_quota() -> None:
    snapshot = build_snapshot([active_agent("a1")], {})
    queued = [_task("a1", cpus=1), _task("a2", cpus=1), _task("b1", role="team-b", cpus=2)]
    result = place_tasks(snapshot, queued, FakeQuotas(Quota("team-a", cpus=1)))
    assert sorted(a.task_id for a in result.assignments) == ["a1", "b1"]
    assert set(result.unplaced) == {"a2"}


def test_a_full_cluster_still_says_quota_exceeded_when_the_quota_holds_too() -> None:
    running = _task("r1", cpus=1, state=TaskState.TASK_RUNNING)
    snapshot = build_snapshot([active_agent("a1", cpus=1)], {"a1": [running]})
    result = place_tasks(snapshot, [_task("t1")], FakeQuotas(Quota("team-a", cpus=1)))
    reasons = result.unplaced["t1"]
    assert reasons["QuotaExceeded"] == 1
    assert reasons["InsufficientCpus"] == 1


def test_an_instance_limit_holds_back_the_newest_tasks() -> None:
    running = _task("r1", state=TaskState.TASK_RUNNING)
    snapshot = build_snapshot([active_agent("a1")], {"a1": [running]})
    quotas = FakeQuotas(Quota("team-a", instances=2), running=(running,))
    result = place_tasks(snapshot, [_task("t1"), _task("t2")], quotas)
    assert [a.task_id for a in result.assignments] == ["t1"]
    assert result.unplaced == {"t2": {"QuotaExceeded": 1}}


def test_higher_priorities_get_the_room_first() -> None:
    quota = Quota("team-a", instances=1)
    low, high = _task("low"), _task("high", priority=5)
    admitted, held = within_counts([low, high], {"team-a": quota}, {})
    assert [t.id for t in admitted] == ["high"]
    assert [t.id for t in held] == ["low"]


def test_an_app_limit_admits_running_apps_and_holds_new_ones() -> None:
    running = _task("r1", app="/team-a/web", state=TaskState.TASK_RUNNING)
    ledger = Ledger()
    ledger.reset([running])
    queued = [
        _task("web2", app="/team-a/web"),
        _task("api1", app="/team-a/api"),
        _task("api2", app="/team-a/api"),
        _task("db1", app="/team-a/db"),
        _task("native", app=None),
    ]
    limits = {"team-a": Quota("team-a", apps=2)}
    admitted, held = within_counts(queued, limits, {"team-a": ledger.usage("team-a")})
    assert [t.id for t in admitted] == ["web2", "api1", "api2", "native"]
    assert [t.id for t in held] == ["db1"]


def test_a_zero_quota_places_nothing_of_the_role() -> None:
    snapshot = build_snapshot([active_agent("a1")], {})
    result = place_tasks(snapshot, [_task("t1")], FakeQuotas(Quota("team-a", cpus=0)))
    assert result.assignments == []
    assert result.unplaced["t1"]["QuotaExceeded"] == 1
