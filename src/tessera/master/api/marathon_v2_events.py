"""`/v2/events`: Marathon's event stream as server-sent events (`event_type` filters)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from tessera.master.api.marathon_v2 import services
from tessera.master.auth import principal_of
from tessera.master.events import EventBus, Subscription
from tessera.model.permissions import (
    ADMIN_EVENTS,
    Action,
    Principal,
    Rid,
    allowed,
    service_rid,
    visible,
)

router = APIRouter()

KEEPALIVE_SECONDS = 10.0


@router.get("/v2/events")
async def events(
    request: Request,
    event_type: Annotated[list[str] | None, Query()] = None,
) -> StreamingResponse:
    controller = services(request)
    bus = controller.events
    subscription = bus.subscribe(event_type or ())
    remote = request.client.host if request.client else ""
    attached = bus.publish(
        "event_stream_attached", controller.master.clock.wall(), remoteAddress=remote
    )
    return StreamingResponse(
        _stream(request, bus, subscription, attached),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event_paths(event: Mapping[str, Any]) -> set[str]:
    """The apps and groups an event is about (none: a cluster-wide, admin event)."""
    found: set[str] = set()
    for key in ("appId", "runSpecId", "groupId"):
        if isinstance(event.get(key), str):
            found.add(event[key])
    definition = event.get("appDefinition")
    if isinstance(definition, Mapping) and isinstance(definition.get("id"), str):
        found.add(definition["id"])
    plan = event.get("plan")
    if isinstance(plan, Mapping):
        for side in ("original", "target"):
            root = plan.get(side)
            apps = root.get("apps", []) if isinstance(root, Mapping) else []
            found.update(a["id"] for a in apps if isinstance(a, Mapping) and "id" in a)
    return found


def event_visible(principal: Principal, event: Mapping[str, Any]) -> bool:
    """Team members see the events of what they may read; the rest needs admin:events."""
    grants = principal.grants
    if grants.superuser:
        return True
    paths = event_paths(event)
    if not paths:
        return allowed(grants, Action.READ, Rid(ADMIN_EVENTS))
    return visible(grants, [service_rid(p) for p in paths if p.startswith("/")])


def _frame(event: dict[str, object]) -> str:
    return f"event: {event['eventType']}\ndata: {json.dumps(event)}\n\n"


async def _stream(
    request: Request, bus: EventBus, subscription: Subscription, attached: dict[str, object]
) -> AsyncIterator[str]:
    principal = principal_of(request)
    try:
        if subscription.wants("event_stream_attached"):
            # Published before this stream existed; every client sees its own.
            yield _frame(attached)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    event = await subscription.queue.get()
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ":\n\n"
                continue
            if event.get("eventType") == "event_stream_attached" and event is attached:
                continue
            if not event_visible(principal, event):
                continue
            yield _frame(event)
    finally:
        bus.unsubscribe(subscription)
