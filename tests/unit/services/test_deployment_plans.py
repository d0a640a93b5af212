"""Deployment plans with plain apps: step order, what each app runs while a step is under
way, when a step is done, and the progress deadline."""

from __future__ import annotations

import pytest
from services_helpers import make_app, make_task

from tessera.model.app import UpgradeStrategy
from tessera.model.group import GroupSpec
from tessera.model.task import TaskState
from tessera.reconcile.deployments import (
    Action,
    ActionKind,
    CyclicDependencies,
    Deployment,
    Progress,
    action_done,
    dependency_layers,
    effective_app,
    overdue,
    plan_steps,
    track_progress,
)
from tessera.reconcile.services import Mode

V1 = "2026-01-01T00:00:00.000Z"
V2 = "2026-01-02T00:00:00.000Z"


def test_new_removed_restarted_and_scaled_apps() -> None:
    keep = make_app(id="/keep")
    old = {"/gone": make_app(id="/gone"), "/keep": keep, "/grow": make_app(id="/grow")}
    new = {
        "/keep": make_app(id="/keep", version=V2).with_changes(last_config_change_at=V2),
        "/grow": make_app(5, id="/grow").with_changes(version=V2, last_scaling_at=V2),
        "/born": make_app(id="/born", version=V2),
    }
    steps = plan_steps(old, new, {})
    assert steps == (
        (Action(ActionKind.STOP, "/gone"),),
        (Action(ActionKind.START, "/born"),),
        (
            Action(ActionKind.SCALE, "/born"),
            Action(ActionKind.SCALE, "/grow"),
            Action(ActionKind.RESTART, "/keep"),
        ),
    )


def test_dependencies_order_the_steps_by_layer() -> None:
    apps = {
        "/shop/db": make_app(id="/shop/db"),
        "/shop/api": make_app(id="/shop/api", dependencies=("/shop/db",)),
        "/shop/web": make_app(id="/shop/web", dependencies=("/shop/api",)),
        "/ops/log": make_app(id="/ops/log"),
    }
    assert dependency_layers(apps, {}) == {
        "/ops/log": 0,
        "/shop/db": 0,
        "/shop/api": 1,
        "/shop/web": 2,
    }
    # a group's dependencies apply to every app in it; a group id stands for its apps
    groups = {"/shop": GroupSpec("/shop", ("/ops",))}
    assert dependency_layers(apps, groups)["/shop/db"] == 1
    steps = plan_steps({}, apps, groups)
    assert [[a.app_id for a in step] for step in steps[1:]] == [
        ["/ops/log"],
        ["/shop/db"],
        ["/shop/api"],
        ["/shop/web"],
    ]


def test_cycles_are_refused() -> None:
    apps = {
        "/a": make_app(id="/a", dependencies=("/b",)),
        "/b": make_app(id="/b", dependencies=("/a",)),
    }
    with pytest.raises(CyclicDependencies, match="/a -> /b -> /a"):
        dependency_layers(apps, {})


def _deployment(steps: tuple[tuple[Action, ...], ...], **apps: object) -> Deployment:
    return Deployment(
        id="d1",
        version=V2,
        steps=steps,
        original=apps.get("original", {}),  # type: ignore[arg-type]
        target=apps.get("target", {}),  # type: ignore[arg-type]
        created_at=0.0,
    )


def test_apps_in_later_steps_keep_their_original_definition() -> None:
    db_old, db_new = make_app(id="/db"), make_app(id="/db", version=V2)
    web_new = make_app(id="/web", version=V2)
    steps = (
        (Action(ActionKind.START, "/web"),),
        (Action(ActionKind.RESTART, "/db"),),
        (Action(ActionKind.SCALE, "/web"),),
    )
    deployment = _deployment(
        steps, original={"/db": db_old, "/web": None}, target={"/db": db_new, "/web": web_new}
    )
    assert effective_app("/db", deployment, db_new) == (db_old, Mode.MAINTAIN)
    started, mode = effective_app("/web", deployment, web_new)
    assert started is not None and started.instances == 0 and mode is Mode.MAINTAIN
    second = deployment.with_changes(current_step=1)
    assert effective_app("/db", second, db_new) == (db_new, Mode.RESTART)
    third = deployment.with_changes(current_step=2)
    assert effective_app("/web", third, web_new) == (web_new, Mode.MAINTAIN)
    assert effective_app("/db", None, db_new) == (db_new, Mode.MAINTAIN)


def test_restart_step_is_done_when_every_instance_is_new_and_ready() -> None:
    old, new = make_app(2, version=V1), make_app(2, version=V2)
    restart = Action(ActionKind.RESTART, "/web")
    deployment = _deployment(((restart,),), original={"/web": old}, target={"/web": new})
    mixed = [make_task(old, 1), make_task(new, 2)]
    assert not action_done(restart, deployment, mixed, 10.0)
    staging = [make_task(new, 1, TaskState.TASK_STAGING), make_task(new, 2)]
    assert not action_done(restart, deployment, staging, 10.0)
    assert action_done(restart, deployment, [make_task(new, 1), make_task(new, 2)], 10.0)


def test_stop_step_waits_for_kills_but_not_forever() -> None:
    app = make_app(1)
    stop = Action(ActionKind.STOP, "/web")
    deployment = _deployment(((stop,),), original={"/web": app}, target={"/web": None})
    killing = make_task(app, 1, TaskState.TASK_KILLING, updated=100.0)
    assert not action_done(stop, deployment, [killing], 101.0)
    # an agent that never answers the kill does not hold the deployment forever
    assert action_done(stop, deployment, [killing], 1000.0)
    assert action_done(stop, deployment, [], 1.0)


def test_progress_deadline() -> None:
    old = make_app(2, version=V1)
    new = make_app(2, version=V2).with_changes(
        upgrade_strategy=UpgradeStrategy(1.0, 1.0, progress_deadline_seconds=60.0)
    )
    restart = Action(ActionKind.RESTART, "/web")
    deployment = _deployment(((restart,),), original={"/web": old}, target={"/web": new})
    deployment = deployment.with_changes(progress=Progress(0, -1, 1 << 30, 100.0))
    tasks = {"/web": [make_task(old, 1), make_task(old, 2), make_task(new, 3)]}
    first = track_progress(deployment, tasks, 110.0)
    assert first.at == 110.0 and first.ready == 1
    deployment = deployment.with_changes(progress=first)
    # the new instance crashes and comes back again and again: not progress
    tasks["/web"][2] = make_task(new, 4, TaskState.TASK_STAGING)
    assert track_progress(deployment, tasks, 150.0) == first
    assert not overdue(deployment, 160.0)
    assert overdue(deployment, 171.0)
    tasks["/web"] = [make_task(old, 1), make_task(new, 3), make_task(new, 4)]
    assert track_progress(deployment, tasks, 171.0).at == 171.0
