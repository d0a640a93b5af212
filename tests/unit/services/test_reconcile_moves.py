"""Moving instances (a drain, a rebalance wave) with plain numbers: replacements start
first where the surge allows, old instances stop once replaced, and ready instances never
drop below ceil(instances x minimumHealthCapacity)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from services_helpers import make_app, make_task

from tessera.model.app import AppSpec
from tessera.model.task import Task, TaskState
from tessera.reconcile.services import Backoff, Mode, capacity_bounds, is_ready, reconcile_app


def _moves(app: AppSpec, tasks: list[Task], moving: dict[str, str | None]):  # type: ignore[no-untyped-def]
    return reconcile_app(app, Mode.MAINTAIN, tasks, Backoff(), 0.0, moving=moving)


def test_a_replacement_starts_before_the_moved_instance_stops() -> None:
    app = make_app(instances=3)
    tasks = [make_task(app, n) for n in range(3)]
    actions = _moves(app, tasks, {tasks[0].id: "agent-b"})
    assert actions.launch == 1 and actions.kill == ()
    assert actions.replacing == ((tasks[0].id, "agent-b"),)


def test_the_moved_instance_stops_once_its_replacement_is_ready() -> None:
    app = make_app(instances=3)
    tasks = [make_task(app, n) for n in range(3)]
    starting = dataclasses.replace(
        make_task(app, 7, TaskState.TASK_STAGING), moved_from=tasks[0].id
    )
    waiting = _moves(app, [*tasks, starting], {tasks[0].id: None})
    assert waiting.launch == 0 and waiting.kill == ()
    ready = dataclasses.replace(starting, state=TaskState.TASK_RUNNING)
    done = _moves(app, [*tasks, ready], {tasks[0].id: None})
    assert done.launch == 0 and done.kill == (tasks[0].id,)


def test_no_surge_and_no_slack_moves_nothing() -> None:
    app = make_app(instances=2, strategy=(1.0, 0.0))
    tasks = [make_task(app, n) for n in range(2)]
    actions = _moves(app, tasks, {t.id: None for t in tasks})
    assert actions.launch == 0 and actions.kill == ()


def test_without_surge_the_slack_stops_first() -> None:
    app = make_app(instances=4, strategy=(0.5, 0.0))
    tasks = [make_task(app, n) for n in range(4)]
    actions = _moves(app, tasks, {t.id: None for t in tasks})
    assert len(actions.kill) == 2 and actions.launch == 2
    assert {old for old, _ in actions.replacing} == set(actions.kill)


def test_a_scale_down_stops_moved_instances_first() -> None:
    app = make_app(instances=2)
    tasks = [make_task(app, n) for n in range(3)]
    actions = _moves(app, tasks, {tasks[2].id: None, tasks[1].id: None})
    assert actions.launch == 0 and len(actions.kill) == 1
    assert actions.kill[0] in {tasks[1].id, tasks[2].id}


def simulate_moves(instances: int, strategy: tuple[float, float], moved: int) -> tuple[int, int]:
    """Move `moved` of the app's instances; every launch is ready one round later.
    Returns (the fewest ready instances seen, the most instances running at once)."""
    app = make_app(instances, strategy=strategy)
    tasks = {t.id: t for t in (make_task(app, n) for n in range(instances))}
    moving: dict[str, str | None] = {task_id: None for task_id in list(tasks)[:moved]}
    lowest, highest, serial = instances, instances, 100
    for _ in range(100):
        if not any(task_id in tasks for task_id in moving):
            return lowest, highest
        actions = _moves(app, list(tasks.values()), moving)
        for task_id in actions.kill:
            del tasks[task_id]
        lowest = min(lowest, sum(1 for t in tasks.values() if is_ready(t, app)))
        for task_id, task in list(tasks.items()):
            if task.state is TaskState.TASK_STAGING:
                tasks[task_id] = dataclasses.replace(task, state=TaskState.TASK_RUNNING)
        replacing = dict(actions.replacing)
        assert len(replacing) <= actions.launch
        for old in [*replacing, *([None] * (actions.launch - len(replacing)))]:
            serial += 1
            task = dataclasses.replace(
                make_task(app, serial, TaskState.TASK_STAGING), moved_from=old
            )
            tasks[task.id] = task
        highest = max(highest, len(tasks))
        if not actions.launch and not actions.kill:
            return lowest, highest  # stuck: nothing may move
    raise AssertionError("the move never finished")


@settings(max_examples=80, deadline=None)
@given(
    instances=st.integers(1, 8),
    minimum=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    over=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    share=st.floats(0.1, 1.0),
)
def test_moves_keep_the_upgrade_strategy(
    instances: int, minimum: float, over: float, share: float
) -> None:
    moved = max(1, round(instances * share))
    lowest, highest = simulate_moves(instances, (minimum, over), moved)
    floor, most = capacity_bounds(make_app(instances, strategy=(minimum, over)))
    assert lowest >= floor
    assert highest <= max(most, instances)


def test_defaults_move_every_instance_without_losing_one() -> None:
    assert simulate_moves(3, (1.0, 1.0), 3) == (3, 6)
