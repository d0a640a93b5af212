"""`/v2/info`, `/v2/leader` and `/ping` (under the DC/OS prefixes too)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

import tessera
from tessera.http_errors import ApiError
from tessera.master.api.marathon_v2 import services

router = APIRouter()

# The Marathon API level Tessera speaks; clients use it to pick features.
MARATHON_VERSION = "1.10.0"


def _leader(request: Request) -> str | None:
    master = services(request).master
    if master.leadership is None:  # a lone master: named as the client reached it
        config = master.config
        return f"{request.url.hostname or config.bind}:{request.url.port or config.port}"
    leader = master.leader()
    return None if leader is None else leader.address


@router.get("/v2/info")
async def info(request: Request) -> dict[str, Any]:
    controller = services(request)
    config = controller.master.config
    leader = _leader(request)
    return {
        "name": "marathon",
        "version": MARATHON_VERSION,
        "buildref": f"tessera-{tessera.__version__}",
        "elected": controller.master.leading,
        "leader": leader,
        "frameworkId": "tessera",
        "marathon_config": {
            "master": leader,
            "framework_name": "tessera",
            "hostname": config.bind,
            "ha": controller.master.leadership is not None,
            "checkpoint": True,
            "executor": "//cmd",
            "features": [],
            "local_port_min": 10000,
            "local_port_max": 20000,
        },
        "zookeeper_config": {},
        "event_subscriber": None,
        "http_config": {"http_port": config.port, "https_port": None, "assets_path": None},
    }


@router.get("/v2/leader")
async def leader(request: Request) -> dict[str, Any]:
    found = _leader(request)
    if found is None:
        raise ApiError(404, "There is no leader")
    return {"leader": found}


@router.delete("/v2/leader")
async def abdicate(request: Request) -> dict[str, Any]:
    master = services(request).master
    if master.leadership is None:
        raise ApiError(
            501,
            "this master runs alone (no standby masters), so there is no leadership to hand over",
        )
    if not master.leading:
        raise ApiError(503, "this master does not lead")
    master.abdicate()
    return {"message": "Leadership abdicated"}


@router.get("/ping", response_class=PlainTextResponse, include_in_schema=False)
async def ping() -> str:
    return "pong"
