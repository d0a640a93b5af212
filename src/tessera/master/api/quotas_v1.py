"""`/v1/quotas`: set, read and remove the quota of a role (a team), with what it consumes.

The global auth dependency has checked each route's rule before a handler runs (read or
update on `dcos:mesos:master:quota:role:<role>`); the list shows only the roles the caller
may read. `PUT` replaces a role's limits: a limit the body leaves out becomes unlimited.
Lowering a quota kills nothing; it only keeps new instances queued (`QuotaExceeded`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tessera.http_errors import ApiError, invalid
from tessera.master.auth import can_read
from tessera.master.core import Master
from tessera.master.quotas import Quota, Quotas
from tessera.model.permissions import PathRefused, quota_rid

router = APIRouter(prefix="/v1", tags=["quotas"])


class QuotaIn(BaseModel):
    """A role's limits; each one left out is unlimited. mem and disk in MiB."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    cpus: float | None = Field(None, ge=0)
    mem: float | None = Field(None, ge=0)
    disk: float | None = Field(None, ge=0)
    gpus: int | None = Field(None, ge=0)
    instances: int | None = Field(None, ge=0, description="tasks holding resources at once")
    apps: int | None = Field(None, ge=0, description="apps and jobs with tasks at once")
    weight: float | None = Field(
        None, gt=0, le=1000, description="the role's weight in fair sharing (default 1)"
    )


def quotas_of(request: Request) -> Quotas:
    quotas = request.app.state.quotas
    assert isinstance(quotas, Quotas)
    return quotas


def checked_role(role: str) -> str:
    """A role name as Mesos allows them (never `*`: the default role has no quota)."""
    try:
        quota_rid(role)
    except PathRefused as refused:
        raise invalid("/role", refused.reason) from None
    return role


def quota_json(quotas: Quotas, quota: Quota) -> dict[str, Any]:
    return {
        "role": quota.role,
        "limits": quota.limits(),
        "weight": 1.0 if quota.weight is None else quota.weight,
        "consumed": quotas.usage(quota.role).to_json(),
    }


def _not_found(role: str) -> ApiError:
    return ApiError(404, f"no quota for role '{role}'")


@router.get("/quotas")
async def list_quotas(request: Request) -> dict[str, list[dict[str, Any]]]:
    quotas = quotas_of(request)
    return {
        "quotas": [
            quota_json(quotas, quota)
            for quota in quotas.all()
            if can_read(request, quota_rid(quota.role))
        ]
    }


@router.get("/quotas/{role}")
async def get_quota(role: str, request: Request) -> dict[str, Any]:
    quotas = quotas_of(request)
    quota = quotas.get(checked_role(role))
    if quota is None:
        raise _not_found(role)
    return quota_json(quotas, quota)


@router.put("/quotas/{role}")
async def put_quota(role: str, body: QuotaIn, request: Request) -> dict[str, Any]:
    quotas = quotas_of(request)
    quota = Quota(role=checked_role(role), **body.model_dump())
    await quotas.put(quota)
    return quota_json(quotas, quota)


@router.delete("/quotas/{role}")
async def delete_quota(role: str, request: Request) -> dict[str, Any]:
    """Answers the quota as it was (what the role consumes stays, now unlimited)."""
    quotas = quotas_of(request)
    quota = quotas.get(checked_role(role))
    if quota is None or not await quotas.remove(role):
        raise _not_found(role)
    return quota_json(quotas, quota)


def install(app: FastAPI, master: Master) -> Quotas:
    """Add the quotas (a master component) and their API; the planner enforces them."""
    quotas = Quotas(master.store, master.state, on_change=master.planner.wake)
    master.add_component(quotas)
    master.planner.quotas = quotas
    app.state.quotas = quotas
    app.include_router(router)
    return quotas
