"""An agent session in-process: the master's agent channel served over in-memory queues.

For tests of the master in a Starlette `TestClient` (which runs the app's event loop in a
portal thread): `connect_agent(client)` starts `AgentChannel.serve` on that loop with a link
whose other end the test drives with `send_json` / `receive_json`, the way an agent speaks
the channel's protocol, without the mutual-TLS listener in front of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from anyio.from_thread import BlockingPortal
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

RECEIVE_TIMEOUT = 10.0


class _Link:
    """The master's side (agent_channel.Link); created on the portal's loop."""

    def __init__(self) -> None:
        self.to_master: asyncio.Queue[str | None] = asyncio.Queue()
        self.to_agent: asyncio.Queue[str | None] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        await self.to_agent.put(data)

    async def receive_text(self) -> str:
        data = await self.to_master.get()
        if data is None:
            raise WebSocketDisconnect(1000)
        return data

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.to_agent.put(None)


class AgentEnd:
    """The test's side: what an agent sends and receives on the channel."""

    def __init__(self, portal: BlockingPortal, link: _Link) -> None:
        self._portal = portal
        self._link = link

    def send_json(self, message: dict[str, Any]) -> None:
        self._portal.call(self._link.to_master.put, json.dumps(message))

    def receive_json(self) -> dict[str, Any]:
        async def receive() -> str | None:
            return await asyncio.wait_for(self._link.to_agent.get(), RECEIVE_TIMEOUT)

        data = self._portal.call(receive)
        if data is None:
            raise WebSocketDisconnect(1000)
        message: dict[str, Any] = json.loads(data)
        return message

    def disconnect(self) -> None:
        self._portal.call(self._link.to_master.put, None)


@contextmanager
def connect_agent(client: TestClient) -> Iterator[AgentEnd]:
    """A session with the master of `client` (inside `with TestClient(app) as client`)."""
    portal = client.portal
    assert portal is not None, "use the TestClient as a context manager"
    master = client.app.state.master  # type: ignore[attr-defined]

    async def make_link() -> _Link:
        return _Link()

    link = portal.call(make_link)
    served = portal.start_task_soon(master.channel.serve, link, None)
    end = AgentEnd(portal, link)
    try:
        yield end
    finally:
        end.disconnect()
        served.result(RECEIVE_TIMEOUT)
