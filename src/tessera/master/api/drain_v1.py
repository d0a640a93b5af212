"""`/v1/agents/{id}/drain` and `/reactivate`: maintenance of one agent (DC/OS `node drain`).

`POST /v1/agents/{id}/drain` with an optional body `{"deadlineSeconds": 600}` takes the
agent out of service: it shows DRAINING while its service instances move away (each app
within its upgradeStrategy) and its job runs may finish until the deadline, then DRAINED.
Draining it again sets a new deadline. `POST /v1/agents/{id}/reactivate` puts it back.
Both answer the agent as `GET /v1/agents/{id}` shows it, with its `drain` (what is left
and why). Unknown agents 404; an agent a rebalance is emptying 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tessera.http_errors import ApiError
from tessera.master.api.native_v1 import agent_view, known_agent
from tessera.master.audit import acting_user
from tessera.master.controllers.drain import DrainController, DrainRefused
from tessera.master.controllers.services import ServicesController
from tessera.master.core import Master

router = APIRouter(prefix="/v1", tags=["agents"])


class DrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    deadlineSeconds: float | None = Field(
        None,
        ge=0,
        le=365 * 86400,
        description="job runs and one-off tasks may run this long, then are killed "
        "(none: until they end); service instances move regardless",
    )


def drains(request: Request) -> DrainController:
    controller = request.app.state.drains
    assert isinstance(controller, DrainController)
    return controller


@router.post("/agents/{agent_id}/drain")
async def drain_agent(
    agent_id: str, request: Request, body: DrainIn | None = None
) -> dict[str, Any]:
    master: Master = request.app.state.master
    known_agent(master, agent_id)
    deadline = body.deadlineSeconds if body is not None else None
    try:
        agent = await drains(request).drain(agent_id, deadline, acting_user(request.scope))
    except DrainRefused as refused:
        raise ApiError(409, str(refused)) from None
    return agent_view(agent, master, drains(request))


@router.post("/agents/{agent_id}/reactivate")
async def reactivate_agent(agent_id: str, request: Request) -> dict[str, Any]:
    master: Master = request.app.state.master
    known_agent(master, agent_id)
    try:
        agent = await drains(request).reactivate(agent_id, acting_user(request.scope))
    except DrainRefused as refused:
        raise ApiError(409, str(refused)) from None
    return agent_view(agent, master, drains(request))


def install(app: FastAPI, master: Master, services: ServicesController) -> DrainController:
    controller = DrainController(master, services)
    master.add_component(controller)
    app.state.drains = controller
    app.include_router(router)
    return controller
