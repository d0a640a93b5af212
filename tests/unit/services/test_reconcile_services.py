"""The per-app rules with plain numbers: scaling, kill selection, backoff, unreachable
instances and the rolling upgrade's capacity bounds."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from services_helpers import make_app, make_task

from tessera.model.app import KillSelection, UnreachableStrategy
from tessera.model.task import Task, TaskState
from tessera.reconcile.services import (
    AppActions,
    Backoff,
    Mode,
    backoff_delay,
    capacity_bounds,
    choose_kills,
    converged,
    is_ready,
    reconcile_app,
    record_failure,
)

OLD = "2026-01-01T00:00:00.000Z"
NEW = "2026-01-02T00:00:00.000Z"


def test_launches_missing_and_kills_extra() -> None:
    app = make_app(instances=3)
    one = [make_task(app, 1)]
    assert reconcile_app(app, Mode.MAINTAIN, one, Backoff(), 100.0).launch == 2
    five = [make_task(app, n) for n in range(5)]
    actions = reconcile_app(app, Mode.MAINTAIN, five, Backoff(), 100.0)
    assert actions.launch == 0 and len(actions.kill) == 2


def test_kill_selection_youngest_and_oldest_first() -> None:
    tasks = [make_task(make_app(), n, started=float(n)) for n in range(4)]
    youngest = choose_kills(tasks, 2, make_app())
    assert [t.created_at for t in youngest] == [3.0, 2.0]
    oldest = choose_kills(tasks, 2, make_app(kill_selection=KillSelection.OLDEST_FIRST))
    assert [t.created_at for t in oldest] == [0.0, 1.0]


def test_kill_selection_prefers_tasks_doing_nothing_yet() -> None:
    app = make_app()
    running = make_task(app, 9, started=100.0)
    queued = make_task(app, 1, TaskState.TASK_QUEUED, started=1.0)
    staging = make_task(app, 2, TaskState.TASK_STAGING, started=2.0)
    assert choose_kills([running, staging, queued], 2, app) == [queued, staging]


def test_stop_kills_everything_alive() -> None:
    app = make_app()
    tasks = [make_task(app, 1), make_task(app, 2, TaskState.TASK_KILLING)]
    tasks.append(make_task(app, 3, TaskState.TASK_FINISHED))
    assert reconcile_app(app, Mode.STOP, tasks, Backoff(), 0.0).kill == (tasks[0].id,)
    assert reconcile_app(None, Mode.MAINTAIN, tasks, Backoff(), 0.0).kill == (tasks[0].id,)


def test_backoff_grows_by_factor_up_to_the_maximum() -> None:
    app = make_app(backoff_seconds=1.0, backoff_factor=2.0, max_launch_delay_seconds=10.0)
    assert [backoff_delay(app, n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_delay(app, 100_000) == 10.0


def test_launch_waits_for_the_backoff_delay() -> None:
    app = make_app(instances=1, backoff_seconds=1.0, backoff_factor=2.0)
    backoff = Backoff()
    for now in (10.0, 10.5, 11.0):
        backoff = record_failure(backoff, app, now)
    # three failures: 4 s after the last one
    waiting = reconcile_app(app, Mode.MAINTAIN, [], backoff, 13.0)
    assert waiting.launch == 0 and waiting.delayed and waiting.recheck_at == 15.0
    assert reconcile_app(app, Mode.MAINTAIN, [], backoff, 15.0).launch == 1


def test_backoff_forgotten_after_a_quiet_spell() -> None:
    app = make_app(backoff_seconds=1.0, backoff_factor=2.0, max_launch_delay_seconds=10.0)
    backoff = record_failure(record_failure(Backoff(), app, 0.0), app, 1.0)
    assert backoff.failures == 2
    assert record_failure(backoff, app, 5.0).failures == 3
    assert record_failure(backoff, app, 100.0) == Backoff(1, 100.0)


def test_unreachable_instance_replaced_after_inactive_and_killed_after_expunge() -> None:
    app = make_app(instances=1, unreachable_strategy=UnreachableStrategy(60.0, 120.0))
    away = make_task(app, 1, TaskState.TASK_UNREACHABLE, updated=1000.0)
    early = reconcile_app(app, Mode.MAINTAIN, [away], Backoff(), 1030.0)
    assert early.launch == 0 and early.kill == () and early.recheck_at == 1060.0
    inactive = reconcile_app(app, Mode.MAINTAIN, [away], Backoff(), 1061.0)
    assert inactive.launch == 1 and inactive.kill == ()
    expunged = reconcile_app(app, Mode.MAINTAIN, [away], Backoff(), 1121.0)
    assert expunged.launch == 1 and expunged.kill == (away.id,)


def test_default_strategy_replaces_at_once_and_marks_the_task_inactive() -> None:
    app = make_app(instances=2)
    assert app.unreachable_strategy == UnreachableStrategy(0.0, 600.0)
    here = make_task(app, 1)
    away = make_task(app, 2, TaskState.TASK_UNREACHABLE, updated=1000.0)
    actions = reconcile_app(app, Mode.MAINTAIN, [here, away], Backoff(), 1000.0)
    assert actions.launch == 1 and actions.kill == () and actions.inactive == (away.id,)
    assert actions.recheck_at == 1600.0


def test_a_task_given_up_stays_given_up_and_is_expunged_later() -> None:
    app = make_app(instances=1)
    away = make_task(app, 1, TaskState.TASK_UNREACHABLE, updated=1000.0)
    given_up = dataclasses.replace(away, inactive_since=1000.0)
    replacement = make_task(app, 2, TaskState.TASK_STAGING)
    quiet = reconcile_app(app, Mode.MAINTAIN, [given_up, replacement], Backoff(), 1300.0)
    assert quiet == AppActions(recheck_at=1600.0)
    expunged = reconcile_app(app, Mode.MAINTAIN, [given_up, replacement], Backoff(), 1600.0)
    assert expunged.kill == (away.id,) and expunged.launch == 0


def test_throttled_keeps_unreachable_tasks_counted() -> None:
    app = make_app(instances=2)
    away = [make_task(app, n, TaskState.TASK_UNREACHABLE, updated=0.0) for n in (1, 2)]
    held = reconcile_app(app, Mode.MAINTAIN, away, Backoff(), 5000.0, throttled=True)
    assert held == AppActions()
    # Already replaced before the throttle: stays replaced, and is still expunged.
    given_up = dataclasses.replace(away[0], inactive_since=0.0)
    tasks = [given_up, away[1], make_task(app, 3)]
    mixed = reconcile_app(app, Mode.MAINTAIN, tasks, Backoff(), 5000.0, throttled=True)
    assert mixed == AppActions(kill=(given_up.id,))
    resumed = reconcile_app(app, Mode.MAINTAIN, away, Backoff(), 5.0)
    assert resumed.launch == 2 and set(resumed.inactive) == {t.id for t in away}


def test_stale_copy_that_comes_back_goes_before_its_replacement() -> None:
    app = make_app(instances=2)
    stale = make_task(app, 1, started=1.0).with_changes(inactive_since=50.0)
    other = make_task(app, 2, started=2.0)
    replacement = make_task(app, 3, started=60.0)
    actions = reconcile_app(app, Mode.MAINTAIN, [stale, other, replacement], Backoff(), 70.0)
    # YOUNGEST_FIRST alone would pick the replacement.
    assert actions.kill == (stale.id,) and actions.launch == 0


def test_queued_replacement_goes_before_the_stale_copy() -> None:
    app = make_app(instances=1)
    stale = make_task(app, 1, started=1.0).with_changes(inactive_since=50.0)
    queued = make_task(app, 2, TaskState.TASK_QUEUED, started=60.0)
    actions = reconcile_app(app, Mode.MAINTAIN, [stale, queued], Backoff(), 70.0)
    assert actions.kill == (queued.id,)


def test_unreachable_strategy_disabled_never_replaces() -> None:
    app = make_app(instances=1, unreachable_strategy=None)
    away = make_task(app, 1, TaskState.TASK_UNREACHABLE, updated=0.0)
    assert reconcile_app(app, Mode.MAINTAIN, [away], Backoff(), 1e6).launch == 0


def test_capacity_bounds_follow_marathon() -> None:
    assert capacity_bounds(make_app(4, strategy=(1.0, 0.5))) == (4, 6)
    assert capacity_bounds(make_app(3, strategy=(0.5, 0.5))) == (2, 4)
    assert capacity_bounds(make_app(3)) == (3, 6)


def simulate_upgrade(instances: int, strategy: tuple[float, float], max_rounds: int = 100) -> int:
    """Run a rolling upgrade where every launched task becomes ready one round later;
    returns the lowest number of ready instances seen."""
    old_app = make_app(instances, version=OLD, strategy=strategy)
    new_app = make_app(instances, version=NEW, strategy=strategy)
    tasks = {t.id: t for t in (make_task(old_app, n, healthy=True) for n in range(instances))}
    lowest = instances
    serial = 100
    for _ in range(max_rounds):
        actions = reconcile_app(new_app, Mode.RESTART, list(tasks.values()), Backoff(), 0.0)
        for task_id in actions.kill:
            del tasks[task_id]
        ready = sum(1 for t in tasks.values() if t.state is TaskState.TASK_RUNNING)
        lowest = min(lowest, ready)
        assert len(tasks) + actions.launch <= capacity_bounds(new_app)[1] or ready < instances
        # what was staging is running now; new launches start staging
        for task_id, task in list(tasks.items()):
            if task.state is TaskState.TASK_STAGING:
                tasks[task_id] = dataclasses.replace(
                    task, state=TaskState.TASK_RUNNING, started_at=float(serial)
                )
        for _ in range(actions.launch):
            serial += 1
            task = make_task(new_app, serial, TaskState.TASK_STAGING)
            tasks[task.id] = task
        if converged(new_app, list(tasks.values()), 0.0, same_config=True):
            return lowest
    raise AssertionError("the upgrade never finished")


def test_upgrade_of_four_never_drops_below_four_ready() -> None:
    assert simulate_upgrade(4, (1.0, 0.5)) == 4


def test_upgrade_with_defaults_keeps_every_instance() -> None:
    assert simulate_upgrade(3, (1.0, 1.0)) == 3


def test_upgrade_without_room_stops_one_old_instance_at_a_time() -> None:
    assert simulate_upgrade(3, (1.0, 0.0)) == 2


@settings(max_examples=60, deadline=None)
@given(
    instances=st.integers(1, 8),
    minimum=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    over=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)
def test_upgrade_keeps_minimum_health_capacity(instances: int, minimum: float, over: float) -> None:
    lowest = simulate_upgrade(instances, (minimum, over))
    floor, most = capacity_bounds(make_app(instances, strategy=(minimum, over)))
    if most == instances and floor == instances:
        floor -= 1  # the one exception: no room at all, Marathon stops one instance
    assert lowest >= floor


def test_ready_needs_health_when_the_app_checks_it() -> None:
    checked = make_app(health_checks=({"protocol": "TCP"},))
    assert not is_ready(make_task(checked, 1), checked)
    assert is_ready(make_task(checked, 1, healthy=True), checked)
    assert is_ready(make_task(make_app(), 1), make_app())


def test_tasks_read_back_from_the_store_run_the_current_config() -> None:
    from tessera.model.app import parse_app
    from tessera.reconcile.services import current_config

    app = parse_app(
        {
            "id": "/web",
            "args": ["serve", "--fast"],
            "env": {"A": "1"},
            "labels": {"team": "x"},
            "constraints": [["hostname", "MAX_PER", "2"]],
            "healthChecks": [{"protocol": "TCP"}],
            "fetch": [{"uri": "https://example.com/a.tgz"}],
        }
    ).with_changes(version=NEW, last_scaling_at=NEW, last_config_change_at=NEW)
    task = make_task(app, 1)
    stored = Task.from_json(task.to_json())
    assert current_config(app)(stored)
    changed = app.with_changes(env={"A": "2"})
    assert not current_config(changed)(stored)
    restarted = app.with_changes(last_config_change_at="2026-01-03T00:00:00.000Z")
    assert not current_config(restarted)(stored)
