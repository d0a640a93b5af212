"""Small builders for the services tests: apps and tasks with plain numbers."""

from __future__ import annotations

from typing import Any

from tessera.model.app import AppSpec, UpgradeStrategy, task_spec_for
from tessera.model.task import Task, TaskState


def make_app(
    instances: int = 3, version: str = "2026-01-01T00:00:00.000Z", **fields: Any
) -> AppSpec:
    strategy = fields.pop("strategy", None)
    app = AppSpec(
        id=fields.pop("id", "/web"),
        cmd="serve",
        instances=instances,
        version=version,
        last_scaling_at=version,
        last_config_change_at=version,
        **fields,
    )
    if strategy is not None:
        app = app.with_changes(upgrade_strategy=UpgradeStrategy(*strategy))
    return app


def make_task(
    app: AppSpec,
    number: int,
    state: TaskState = TaskState.TASK_RUNNING,
    *,
    started: float | None = None,
    healthy: bool | None = None,
    updated: float | None = None,
) -> Task:
    born = float(number) if started is None else started
    return Task(
        id=f"web.{app.config_version}.{number}",
        spec=task_spec_for(app),
        state=state,
        created_at=born,
        updated_at=born if updated is None else updated,
        started_at=born if state is TaskState.TASK_RUNNING else None,
        healthy=healthy,
    )
