"""Pure deployment plans: a change of apps becomes ordered steps of concurrent actions.

Steps follow Marathon's DeploymentPlan: stop the removed apps, start the new ones at zero
instances, then scale or restart the changed apps one dependency layer at a time (an app
goes after everything it depends on). While a step runs, apps in later steps keep their
original definition. A step is done when its apps have converged; a deployment that makes
no progress for `progressDeadlineSeconds` has failed (and the controller rolls it back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tessera.model.app import AppSpec, app_from_json, app_to_json, is_under, parent_path
from tessera.model.group import GroupSpec
from tessera.model.task import Task
from tessera.reconcile.services import Mode, converged, current_config, is_ready

DEFAULT_DEADLINE = 600.0


class ActionKind(StrEnum):
    START = "StartApplication"
    STOP = "StopApplication"
    SCALE = "ScaleApplication"
    RESTART = "RestartApplication"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    app_id: str

    def to_json(self) -> dict[str, Any]:
        return {"action": self.kind.value, "app": self.app_id}


Steps = tuple[tuple[Action, ...], ...]


@dataclass(frozen=True, slots=True)
class Progress:
    """The best a deployment has done in its current step; any improvement is progress."""

    step: int = 0
    ready: int = -1
    remaining: int = 1 << 30
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    version: str
    steps: Steps
    # The affected apps before and after (None: the app does not exist on that side).
    original: Mapping[str, AppSpec | None]
    target: Mapping[str, AppSpec | None]
    created_at: float
    current_step: int = 0
    progress: Progress = field(default_factory=Progress)
    rollback_of: str | None = None
    group_id: str = "/"

    @property
    def affected_apps(self) -> list[str]:
        return sorted({action.app_id for step in self.steps for action in step})

    @property
    def done(self) -> bool:
        return self.current_step >= len(self.steps)

    @property
    def current_actions(self) -> tuple[Action, ...]:
        return () if self.done else self.steps[self.current_step]

    def with_changes(self, **changes: Any) -> Deployment:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "steps": [[a.to_json() for a in step] for step in self.steps],
            "original": {k: _stored(v) for k, v in self.original.items()},
            "target": {k: _stored(v) for k, v in self.target.items()},
            "created_at": self.created_at,
            "current_step": self.current_step,
            "rollback_of": self.rollback_of,
            "group_id": self.group_id,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Deployment:
        def apps(raw: Mapping[str, Any]) -> dict[str, AppSpec | None]:
            return {k: app_from_json(v) if v else None for k, v in raw.items()}

        return Deployment(
            id=str(data["id"]),
            version=str(data["version"]),
            steps=tuple(
                tuple(Action(ActionKind(a["action"]), str(a["app"])) for a in step)
                for step in data["steps"]
            ),
            original=apps(data.get("original", {})),
            target=apps(data.get("target", {})),
            created_at=float(data["created_at"]),
            current_step=int(data.get("current_step", 0)),
            rollback_of=data.get("rollback_of"),
            group_id=str(data.get("group_id", "/")),
        )


def _stored(app: AppSpec | None) -> dict[str, Any] | None:
    return app_to_json(app, users=True) if app is not None else None


def marathon_json(deployment: Deployment) -> dict[str, Any]:
    """`GET /v2/deployments` entry (currentStep counts from 1, as Marathon's does)."""
    return {
        "id": deployment.id,
        "version": deployment.version,
        "affectedApps": deployment.affected_apps,
        "affectedPods": [],
        "steps": [{"actions": [a.to_json() for a in step]} for step in deployment.steps],
        "currentActions": [
            {**a.to_json(), "readinessCheckResults": []} for a in deployment.current_actions
        ],
        "currentStep": min(deployment.current_step + 1, len(deployment.steps)),
        "totalSteps": len(deployment.steps),
    }


# ---- dependencies --------------------------------------------------------------------------


class CyclicDependencies(ValueError):
    """The dependencies of some apps form a cycle; no order can satisfy them."""


def app_dependencies(
    apps: Mapping[str, AppSpec], groups: Mapping[str, GroupSpec]
) -> dict[str, set[str]]:
    """app -> the apps it must wait for: its own dependencies and those of its groups, an
    id naming a group standing for every app in it."""

    def resolve(target: str) -> set[str]:
        if target in apps:
            return {target}
        return {a for a in apps if is_under(a, target)}

    found: dict[str, set[str]] = {}
    for app_id, app in apps.items():
        wanted = set(app.dependencies)
        node = parent_path(app_id)
        while True:
            group = groups.get(node)
            if group is not None:
                wanted.update(group.dependencies)
            if node == "/":
                break
            node = parent_path(node)
        found[app_id] = {dep for target in wanted for dep in resolve(target)} - {app_id}
    return found


def dependency_layers(
    apps: Mapping[str, AppSpec], groups: Mapping[str, GroupSpec]
) -> dict[str, int]:
    """app -> its layer: 0 without dependencies, else 1 + the deepest layer it waits for."""
    edges = app_dependencies(apps, groups)
    layers: dict[str, int] = {}
    visiting: set[str] = set()

    def layer(app_id: str, chain: tuple[str, ...]) -> int:
        if app_id in layers:
            return layers[app_id]
        if app_id in visiting:
            cycle = " -> ".join([*chain[chain.index(app_id) :], app_id])
            raise CyclicDependencies(f"Dependency graph has cyclic dependencies: {cycle}")
        visiting.add(app_id)
        depth = max((layer(dep, (*chain, app_id)) + 1 for dep in edges[app_id]), default=0)
        visiting.discard(app_id)
        layers[app_id] = depth
        return depth

    for app_id in sorted(apps):
        layer(app_id, ())
    return layers


# ---- plans ---------------------------------------------------------------------------------


def change_kind(old: AppSpec | None, new: AppSpec) -> ActionKind | None:
    if old is None:
        return ActionKind.SCALE if new.instances > 0 else None
    if old.config_version != new.config_version or not old.same_config(new):
        return ActionKind.RESTART
    if old.instances != new.instances:
        return ActionKind.SCALE
    return None


def plan_steps(
    original: Mapping[str, AppSpec],
    target: Mapping[str, AppSpec],
    groups: Mapping[str, GroupSpec],
) -> Steps:
    """Steps from the whole set of apps before to the whole set after."""
    steps: list[tuple[Action, ...]] = []
    removed = sorted(set(original) - set(target))
    added = sorted(set(target) - set(original))
    if removed:
        steps.append(tuple(Action(ActionKind.STOP, a) for a in removed))
    if added:
        steps.append(tuple(Action(ActionKind.START, a) for a in added))
    layers = dependency_layers(target, groups)
    by_layer: dict[int, list[Action]] = {}
    for app_id in sorted(target):
        kind = change_kind(original.get(app_id), target[app_id])
        if kind is not None:
            by_layer.setdefault(layers[app_id], []).append(Action(kind, app_id))
    steps.extend(tuple(by_layer[layer]) for layer in sorted(by_layer))
    return tuple(steps)


def effective_app(
    app_id: str, deployment: Deployment | None, stored: AppSpec | None
) -> tuple[AppSpec | None, Mode]:
    """The definition and mode an app is reconciled to while `deployment` runs."""
    if deployment is None:
        return stored, Mode.MAINTAIN if stored is not None else Mode.STOP
    reached = [
        action
        for step in deployment.steps[: deployment.current_step + 1]
        for action in step
        if action.app_id == app_id
    ]
    if not reached:
        before = deployment.original.get(app_id)
        return before, Mode.MAINTAIN if before is not None else Mode.STOP
    last = reached[-1]
    after = deployment.target.get(app_id)
    if last.kind is ActionKind.STOP or after is None:
        return None, Mode.STOP
    if last.kind is ActionKind.START:
        return after.with_changes(instances=0), Mode.MAINTAIN
    if last.kind is ActionKind.RESTART:
        return after, Mode.RESTART
    return after, Mode.MAINTAIN


def action_done(action: Action, deployment: Deployment, tasks: Sequence[Task], now: float) -> bool:
    if action.kind is ActionKind.START:
        return True
    target = deployment.target.get(action.app_id)
    if action.kind is ActionKind.STOP or target is None:
        return converged(_stopped(deployment, action.app_id), tasks, now, same_config=False)
    return converged(target, tasks, now, same_config=action.kind is ActionKind.RESTART)


def _stopped(deployment: Deployment, app_id: str) -> AppSpec:
    before = deployment.original.get(app_id) or AppSpec(id=app_id, cmd="true")
    return before.with_changes(instances=0)


# ---- progress and deadlines ------------------------------------------------------------------


def step_deadline(deployment: Deployment) -> float:
    """The shortest progressDeadlineSeconds among the apps of the current step."""
    deadlines = []
    for action in deployment.current_actions:
        app = deployment.target.get(action.app_id) or deployment.original.get(action.app_id)
        if app is not None:
            deadlines.append(app.upgrade_strategy.progress_deadline_seconds)
    return min(deadlines, default=DEFAULT_DEADLINE)


def measure(deployment: Deployment, tasks_by_app: Mapping[str, Sequence[Task]]) -> tuple[int, int]:
    """(ready instances of the new versions, instances still to go) in the current step."""
    ready = remaining = 0
    for action in deployment.current_actions:
        tasks = [t for t in tasks_by_app.get(action.app_id, ()) if not t.state.terminal]
        target = deployment.target.get(action.app_id)
        if action.kind is ActionKind.STOP or target is None:
            remaining += len(tasks)
            continue
        check = current_config(target)
        current = [t for t in tasks if check(t)]
        ready += sum(1 for t in current if is_ready(t, target))
        remaining += len(tasks) - len(current) + max(0, len(current) - target.instances)
    return ready, remaining


def track_progress(
    deployment: Deployment, tasks_by_app: Mapping[str, Sequence[Task]], now: float
) -> Progress:
    """The deployment's progress record after looking at it `now`."""
    ready, remaining = measure(deployment, tasks_by_app)
    best = deployment.progress
    if best.step != deployment.current_step or best.at == 0.0:
        return Progress(deployment.current_step, ready, remaining, now)
    if ready > best.ready or remaining < best.remaining:
        return Progress(best.step, max(ready, best.ready), min(remaining, best.remaining), now)
    return best


def overdue(deployment: Deployment, now: float) -> bool:
    """No progress for longer than the current step's deadline."""
    return not deployment.done and now - deployment.progress.at > step_deadline(deployment)
