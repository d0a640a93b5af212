"""The master's event bus: Marathon events for `/v2/events` subscribers (server-sent events).

Publishing never blocks: each subscriber has a bounded queue, and one that falls too far
behind loses its oldest events rather than slowing the master down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

SUBSCRIBER_QUEUE = 10_000


def timestamp(wall_seconds: float) -> str:
    moment = datetime.fromtimestamp(wall_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Subscription:
    def __init__(self, event_types: Iterable[str] = ()) -> None:
        self.event_types = frozenset(event_types)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = 0

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    def offer(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(event)


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, event_types: Iterable[str] = ()) -> Subscription:
        subscription = Subscription(event_types)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def publish(self, event_type: str, now: float, **fields: Any) -> dict[str, Any]:
        event = {**fields, "eventType": event_type, "timestamp": timestamp(now)}
        for subscription in list(self._subscriptions):
            if subscription.wants(event_type):
                subscription.offer(event)
        return event
