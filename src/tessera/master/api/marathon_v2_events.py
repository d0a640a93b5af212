"""`/v2/events`: Marathon's event stream as server-sent events (`event_type` filters)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from tessera.master.api.marathon_v2 import services
from tessera.master.events import EventBus, Subscription

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


def _frame(event: dict[str, object]) -> str:
    return f"event: {event['eventType']}\ndata: {json.dumps(event)}\n\n"


async def _stream(
    request: Request, bus: EventBus, subscription: Subscription, attached: dict[str, object]
) -> AsyncIterator[str]:
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
            yield _frame(event)
    finally:
        bus.unsubscribe(subscription)
