"""`/v1/rebalance`: free whole agents by moving instances, wave by wave ("clear lines").

`POST /v1/rebalance` with `{"dryRun": true}` answers the plan (which agents would be emptied,
each move, the waves, agents used before and after, the lower bound); without it the plan
starts (201, the rebalance as `GET /v1/rebalance/{id}` shows it), or, when it would move
nothing, 200 with the plan and its `reason`. `maxMoves` caps the moves. One rebalance runs
at a time: another answers 409 with its id. `DELETE /v1/rebalance/{id}` cancels it after
the current wave. `GET /v1/rebalance` lists the running one and the recent ones.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tessera.http_errors import ApiError
from tessera.master.audit import acting_user
from tessera.master.config import MasterConfig
from tessera.master.controllers.drain import DrainController
from tessera.master.controllers.rebalance import (
    Rebalance,
    RebalanceConflict,
    RebalanceController,
    RebalanceFinished,
)
from tessera.master.controllers.services import ServicesController
from tessera.master.core import Master

router = APIRouter(prefix="/v1", tags=["rebalance"])


class RebalanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dryRun: bool = Field(False, description="answer the plan, move nothing")
    maxMoves: int | None = Field(
        None, ge=0, description="at most this many moves (none: as many as pay)"
    )


def rebalancer(request: Request) -> RebalanceController:
    controller = request.app.state.rebalancer
    assert isinstance(controller, RebalanceController)
    return controller


@router.post("/rebalance", response_model=None)
async def post_rebalance(
    request: Request, body: RebalanceIn | None = None
) -> dict[str, Any] | JSONResponse:
    controller = rebalancer(request)
    body = body or RebalanceIn()
    if body.dryRun:
        plan, seconds = await controller.plan(body.maxMoves)
        return {"dryRun": True, "planningSeconds": round(seconds, 3), **plan.to_json()}
    try:
        started = await controller.start_rebalance(body.maxMoves, acting_user(request.scope))
    except RebalanceConflict as conflict:
        raise ApiError(409, str(conflict), rebalance=conflict.rebalance_id) from None
    if not isinstance(started, Rebalance):
        return {"id": None, **started.to_json()}  # nothing to gain: the plan and its reason
    return JSONResponse(controller.view(started), status_code=201)


@router.get("/rebalance")
async def list_rebalances(request: Request) -> dict[str, Any]:
    controller = rebalancer(request)
    found = sorted(controller.rebalances.values(), key=lambda r: r.created_at, reverse=True)
    return {"rebalances": [controller.view(r) for r in found]}


@router.get("/rebalance/{rebalance_id}")
async def get_rebalance(rebalance_id: str, request: Request) -> dict[str, Any]:
    controller = rebalancer(request)
    found = controller.rebalances.get(rebalance_id)
    if found is None:
        raise ApiError(404, f"Rebalance '{rebalance_id}' does not exist")
    return controller.view(found)


@router.delete("/rebalance/{rebalance_id}")
async def cancel_rebalance(rebalance_id: str, request: Request) -> dict[str, Any]:
    controller = rebalancer(request)
    try:
        cancelled = await controller.cancel(rebalance_id)
    except KeyError:
        raise ApiError(404, f"Rebalance '{rebalance_id}' does not exist") from None
    except RebalanceFinished as finished:
        raise ApiError(409, str(finished)) from None
    return controller.view(cancelled)


def install(
    app: FastAPI,
    master: Master,
    services: ServicesController,
    drains: DrainController,
    config: MasterConfig,
) -> RebalanceController:
    controller = RebalanceController(master, services, drains, config)
    master.add_component(controller)
    app.state.rebalancer = controller
    app.include_router(router)
    return controller
