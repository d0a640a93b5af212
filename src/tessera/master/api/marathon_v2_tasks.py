"""`/v2/tasks` and `/v2/apps/{id}/tasks`: list the instances of apps, kill them (and scale
down with `scale=true`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from tessera.http_errors import ApiError
from tessera.master.api.marathon_v2 import (
    conflict,
    deployment_result,
    json_body,
    not_found,
    services,
    task_json,
    visible_tasks,
)
from tessera.master.api.marathon_v2_apps import deploy
from tessera.master.auth import can_read_app
from tessera.master.controllers.deployments import DeploymentConflict
from tessera.master.controllers.services import ServicesController
from tessera.model.app import AppSpec, canonical_path
from tessera.model.task import Task, TaskState

router = APIRouter()

Flag = Annotated[bool, Query()]

_STATUS = {
    "running": {TaskState.TASK_RUNNING},
    "staging": {TaskState.TASK_STAGING, TaskState.TASK_STARTING},
    "killing": {TaskState.TASK_KILLING},
    "unreachable": {TaskState.TASK_UNREACHABLE},
}


@router.get("/v2/tasks")
async def list_tasks(
    request: Request, status: Annotated[list[str] | None, Query()] = None
) -> dict[str, Any]:
    controller = services(request)
    wanted: set[TaskState] = set()
    for name in status or ():
        wanted |= _STATUS.get(name.lower(), set())
    agents = controller.master.state.agents
    found = []
    for app_id in sorted(controller.state.apps):
        app = controller.state.apps[app_id]
        if not can_read_app(request, app_id):
            continue
        for task in visible_tasks(controller, app_id):
            if not wanted or task.state in wanted:
                found.append(task_json(task, app, agents))
    return {"tasks": found}


@router.post("/v2/tasks/delete")
async def delete_tasks(
    request: Request, scale: Flag = False, force: Flag = False, wipe: Flag = False
) -> JSONResponse:
    controller = services(request)
    body = await json_body(request)
    ids = body.get("ids") if isinstance(body, Mapping) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(
            422, "Object is not valid", details=[{"path": "/ids", "errors": ["must be a list"]}]
        )
    by_app: dict[str, list[Task]] = {}
    for task_id in ids:
        task = controller.master.state.tasks.get(task_id)
        app_id = task.spec.app_id if task is not None else None
        if task is None or app_id not in controller.state.apps:
            raise ApiError(404, f"Task '{task_id}' does not exist")
        by_app.setdefault(app_id or "", []).append(task)
    return await _kill(controller, by_app, scale, force)


@router.get("/v2/apps/{app_id:path}/tasks")
async def app_tasks(app_id: str, request: Request) -> dict[str, Any]:
    controller = services(request)
    app = _app(controller, app_id)
    agents = controller.master.state.agents
    return {"tasks": [task_json(t, app, agents) for t in visible_tasks(controller, app.id)]}


@router.delete("/v2/apps/{app_id:path}/tasks/{task_id}")
async def kill_app_task(
    app_id: str,
    task_id: str,
    request: Request,
    scale: Flag = False,
    force: Flag = False,
    wipe: Flag = False,
) -> JSONResponse:
    controller = services(request)
    app = _app(controller, app_id)
    task = controller.state.live_tasks.get(app.id, {}).get(task_id)
    if task is None:
        raise ApiError(404, f"Task '{task_id}' does not exist")
    response = await _kill(controller, {app.id: [task]}, scale, force)
    if scale:
        return response
    killed = controller.master.state.tasks[task_id]
    agents = controller.master.state.agents
    return JSONResponse({"task": task_json(killed, app, agents)})


@router.delete("/v2/apps/{app_id:path}/tasks")
async def kill_app_tasks(
    app_id: str,
    request: Request,
    host: str | None = None,
    scale: Flag = False,
    force: Flag = False,
    wipe: Flag = False,
) -> JSONResponse:
    controller = services(request)
    app = _app(controller, app_id)
    tasks = [t for t in controller.state.tasks_of(app.id) if host is None or t.hostname == host]
    return await _kill(controller, {app.id: tasks}, scale, force)


def _app(controller: ServicesController, app_id: str) -> AppSpec:
    app_id = canonical_path(app_id)
    app = controller.state.apps.get(app_id)
    if app is None:
        raise not_found(app_id)
    return app


async def _kill(
    controller: ServicesController, by_app: dict[str, list[Task]], scale: bool, force: bool
) -> JSONResponse:
    """Kill the tasks; with `scale`, lower each app's instances by as many in one
    deployment, so that they are not replaced."""
    async with controller.lock:
        changes: dict[str, AppSpec | None] = {}
        if scale:
            for app_id, tasks in by_app.items():
                app = controller.state.apps[app_id]
                live = [t for t in tasks if not t.state.terminal]
                changes[app_id] = app.with_changes(instances=max(0, app.instances - len(live)))
            # Checked before any kill, so that a conflict changes nothing.
            blocking = {d.id for a in changes for d in controller.state.deployments_of(a)}
            if blocking and not force:
                raise conflict(DeploymentConflict(sorted(blocking)))
        killed: list[Task] = []
        for tasks in by_app.values():
            for task in tasks:
                if not task.state.terminal:
                    killed.append(await controller.master.kill(task.id))
        if scale:
            deployment = await deploy(controller, changes, force)
            return deployment_result(deployment)
    agents = controller.master.state.agents
    views = [task_json(t, controller.state.apps.get(t.spec.app_id or ""), agents) for t in killed]
    return JSONResponse({"tasks": views})
