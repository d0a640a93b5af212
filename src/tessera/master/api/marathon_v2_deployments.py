"""`/v2/deployments`: running deployments; DELETE rolls one back (`force=true`: stops it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from tessera.http_errors import ApiError
from tessera.master.api.marathon_v2 import deployment_result, readiness_results, services
from tessera.master.auth import can_read_app
from tessera.master.controllers.services import ServicesController
from tessera.reconcile.deployments import Deployment, marathon_json
from tessera.reconcile.services import current_config

router = APIRouter()


@router.get("/v2/deployments")
async def list_deployments(request: Request) -> list[dict[str, Any]]:
    controller = services(request)
    running = sorted(controller.state.deployments.values(), key=lambda d: d.created_at)
    # A deployment is listed to whoever may read any of the apps it touches.
    return [
        _with_readiness(controller, d)
        for d in running
        if any(can_read_app(request, app_id) for app_id in d.affected_apps)
    ]


def _with_readiness(controller: ServicesController, deployment: Deployment) -> dict[str, Any]:
    """The deployment with, per current action, the readiness of the new instances."""
    data = marathon_json(deployment)
    for action in data["currentActions"]:
        target = deployment.target.get(action["app"])
        if target is None:
            continue
        current = current_config(target)
        tasks = [t for t in controller.state.tasks_of(target.id) if current(t)]
        action["readinessCheckResults"] = readiness_results(target, tasks)
    return data


@router.delete("/v2/deployments/{deployment_id}")
async def cancel_deployment(
    deployment_id: str, request: Request, force: Annotated[bool, Query()] = False
) -> Response:
    controller = services(request)
    async with controller.lock:
        if deployment_id not in controller.state.deployments:
            raise ApiError(404, f"DeploymentPlan {deployment_id} does not exist")
        rollback = await controller.deployments.cancel(deployment_id, force=force)
    if rollback is None:
        return Response(status_code=202)
    return deployment_result(rollback)
