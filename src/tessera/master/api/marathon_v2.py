"""Marathon's v2 REST API: routers by resource, shared views, and the one `install` call.

Served at `/v2/...` and, for DC/OS clients, under `/marathon/v2/...` and
`/service/marathon/v2/...`. Shapes, defaults and codes follow Marathon 1.x; see
docs/marathon.md for what differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from tessera.http_errors import ApiError
from tessera.master.audit import acting_user
from tessera.master.controllers.deployments import DeploymentConflict
from tessera.master.controllers.services import ServicesController
from tessera.master.core import Master
from tessera.master.events import EventBus, timestamp
from tessera.model.agent import Agent
from tessera.model.app import AppSpec, InvalidApp, app_to_json, version_info
from tessera.model.task import Task, TaskState, ip_addresses
from tessera.reconcile.deployments import CyclicDependencies, Deployment

PREFIXES = ("", "/marathon", "/service/marathon")


def install(app: FastAPI, master: Master) -> ServicesController:
    """Add the services controller to the master and the Marathon API to the app."""
    from tessera.master.api import (
        marathon_v2_apps,
        marathon_v2_deployments,
        marathon_v2_events,
        marathon_v2_groups,
        marathon_v2_info,
        marathon_v2_queue,
        marathon_v2_tasks,
    )

    events = EventBus()
    controller = ServicesController(master, events)
    master.add_component(controller)
    app.state.services = controller

    def deployment_apps(deployment_id: str) -> list[str] | None:
        deployment = controller.state.deployments.get(deployment_id)
        return deployment.affected_apps if deployment is not None else None

    master.auth.deployment_apps.append(deployment_apps)
    router = APIRouter()
    # Task routes first: `/v2/apps/{id}/tasks` must win over `/v2/apps/{id:path}`.
    for module in (
        marathon_v2_tasks,
        marathon_v2_apps,
        marathon_v2_groups,
        marathon_v2_deployments,
        marathon_v2_queue,
        marathon_v2_info,
        marathon_v2_events,
    ):
        router.include_router(module.router)
    for prefix in PREFIXES:
        app.include_router(router, prefix=prefix, tags=["marathon"] if not prefix else [])
    return controller


def services(request: Request) -> ServicesController:
    controller: ServicesController = request.app.state.services
    return controller


# ---- input ----------------------------------------------------------------------------------


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": "/", "errors": ["a JSON body is required"]}],
        )
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(
            422, "Invalid JSON", details=[{"path": "/", "errors": [f"invalid JSON: {error}"]}]
        ) from None
    except RecursionError:
        # Mesos' CVE-2018-11793: a body nested thousands deep must not take the master down.
        raise ApiError(
            422, "Invalid JSON", details=[{"path": "/", "errors": ["nested too deeply"]}]
        ) from None


def invalid(error: InvalidApp) -> ApiError:
    return ApiError(422, "Object is not valid", details=error.marathon_details())


def cyclic(error: CyclicDependencies) -> ApiError:
    return ApiError(
        422, "Object is not valid", details=[{"path": "/dependencies", "errors": [str(error)]}]
    )


def conflict(error: DeploymentConflict) -> ApiError:
    first = error.deployment_ids[0]
    return ApiError(
        409,
        "App is locked by one or more deployments. Override with the option '?force=true'. "
        f"View details at '/v2/deployments/{first}'.",
        deployments=[{"id": d} for d in error.deployment_ids],
    )


def embeds(raw: Iterable[str] | None) -> set[str]:
    found: set[str] = set()
    for item in raw or ():
        found.update(part.strip() for part in item.split(",") if part.strip())
    return found


# ---- output ---------------------------------------------------------------------------------


def deployment_result(
    deployment: Deployment, status: int = 200, location: str | None = None
) -> JSONResponse:
    headers = {"Marathon-Deployment-Id": deployment.id}
    if location:
        headers["Location"] = location
    body = {"version": deployment.version, "deploymentId": deployment.id}
    return JSONResponse(body, status_code=status, headers=headers)


class _Renderings:
    """JSON of immutable records, reused while the very same record objects come back (an
    app or task that changes is a new object): `GET /v2/apps?embed=apps.tasks` at 1,000
    tasks would otherwise rebuild every dict on every call. Callers must not mutate them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: dict[str, tuple[tuple[object, ...], dict[str, Any]]] = {}

    def get(
        self, key: str, records: tuple[object, ...], render: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        hit = self.entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], records, strict=True)):
            return hit[1]
        if len(self.entries) >= self.limit:
            self.entries.clear()
        data = render()
        self.entries[key] = (records, data)
        return data


_APPS = _Renderings(50_000)
_TASKS = _Renderings(200_000)


def task_json(task: Task, app: AppSpec | None, agents: dict[str, Agent]) -> dict[str, Any]:
    """Marathon's enriched task (the keys `marathon` clients know, no others)."""
    agent = agents.get(task.agent_id or "")
    return _TASKS.get(task.id, (task, app, agent), lambda: _task_json(task, app, agent))


def _task_json(task: Task, app: AppSpec | None, agent: Agent | None) -> dict[str, Any]:
    attributes = agent.attributes if agent else {}
    data: dict[str, Any] = {
        "id": task.id,
        "appId": task.spec.app_id,
        "host": task.hostname,
        "ports": list(task.ports),
        "servicePorts": app.service_ports if app is not None else [],
        "slaveId": task.agent_id,
        "stagedAt": timestamp(task.created_at),
        "startedAt": timestamp(task.started_at) if task.started_at else None,
        "version": task.spec.app_version,
        "state": task.state.value,
        "ipAddresses": ip_addresses(task),
        "localVolumes": [],
        "role": task.spec.role,
    }
    if "region" in attributes:
        data["region"] = attributes["region"]
    if "zone" in attributes:
        data["zone"] = attributes["zone"]
    if app is not None and app.health_checks and task.healthy is not None:
        data["healthCheckResults"] = [
            {
                "alive": task.healthy,
                "consecutiveFailures": 0 if task.healthy else 1,
                "firstSuccess": None,
                "lastFailure": None,
                "lastSuccess": None,
                "lastFailureCause": None if task.healthy else (task.message or "unhealthy"),
                "instanceId": task.id,
                "taskId": task.id,
            }
        ]
    else:
        data["healthCheckResults"] = []
    return data


def visible_tasks(controller: ServicesController, app_id: str) -> list[Task]:
    """The app's tasks as Marathon lists them: placed and not ended (queued ones are in
    `/v2/queue`)."""
    tasks = [t for t in controller.state.tasks_of(app_id) if t.state is not TaskState.TASK_QUEUED]
    return sorted(tasks, key=lambda t: (t.created_at, t.id))


# Tessera's embed: who made the last scaling and config change, in versionInfo.
VERSION_USERS = frozenset({"app.versionInfo.user", "apps.versionInfo.user"})


def app_json(controller: ServicesController, app: AppSpec, embed: set[str]) -> dict[str, Any]:
    """Marathon's app with the live counts, its deployments, and what `embed` asks for."""
    data = dict(_APPS.get(app.id, (app,), lambda: app_to_json(app)))
    tasks = visible_tasks(controller, app.id)
    data.update(counts(app, tasks))
    data["deployments"] = [{"id": d.id} for d in controller.state.deployments_of(app.id)]
    if embed & VERSION_USERS:
        data["versionInfo"] = version_info(app, users=True)
    if "apps.tasks" in embed or "app.tasks" in embed:
        agents = controller.master.state.agents
        data["tasks"] = [task_json(t, app, agents) for t in tasks]
    if "apps.readiness" in embed or "app.readiness" in embed:
        data["readinessCheckResults"] = readiness_results(app, tasks)
    failure = controller.state.last_failure.get(app.id)
    if failure is not None and (
        "apps.lastTaskFailure" in embed
        or "app.lastTaskFailure" in embed
        or "apps.failures" in embed
    ):
        data["lastTaskFailure"] = {
            "appId": app.id,
            "host": failure.hostname,
            "message": failure.message or "",
            "state": failure.state.value,
            "taskId": failure.id,
            "instanceId": failure.id,
            "slaveId": failure.agent_id,
            "timestamp": timestamp(failure.finished_at or failure.updated_at),
            "version": failure.spec.app_version,
        }
    return data


def readiness_results(app: AppSpec, tasks: Iterable[Task]) -> list[dict[str, Any]]:
    """Marathon's TaskReadinessCheckResult for each running task of an app with readiness
    checks (the agent reports whether a task is ready, not the last response)."""
    if not app.readiness_checks:
        return []
    names = [str(check.get("name", "readinessCheck")) for check in app.readiness_checks]
    return [
        {"name": name, "taskId": task.id, "ready": task.ready is True, "lastResponse": None}
        for task in tasks
        if task.state is TaskState.TASK_RUNNING
        for name in names
    ]


def counts(app: AppSpec, tasks: list[Task]) -> dict[str, int]:
    staged = sum(1 for t in tasks if t.state in (TaskState.TASK_STAGING, TaskState.TASK_STARTING))
    running = [t for t in tasks if t.state is TaskState.TASK_RUNNING]
    checked = bool(app.health_checks)
    return {
        "tasksStaged": staged,
        "tasksRunning": len(running),
        "tasksHealthy": sum(1 for t in running if checked and t.healthy is True),
        "tasksUnhealthy": sum(1 for t in running if checked and t.healthy is False),
    }


def post_event(
    controller: ServicesController, request: Request, app: AppSpec | None, app_id: str
) -> None:
    client = request.client.host if request.client else None
    definition = app_to_json(app) if app is not None else {"id": app_id}
    controller.events.publish(
        "api_post_event",
        controller.master.clock.wall(),
        clientIp=client,
        uri=request.url.path,
        appDefinition=definition,
        # Tessera's addition (clients ignore unknown event fields): who made the change.
        user=acting_user(request.state),
    )


def not_found(app_id: str) -> ApiError:
    return ApiError(404, f"App '{app_id}' does not exist")
