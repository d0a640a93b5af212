"""A WebSocket proxy between an agent and the master that drops and duplicates status
updates and acknowledgements: the injectable unreliable transport of the fault suite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tessera.model.protocol import AGENT_STREAM_PATH

FAULTY_TYPES = frozenset({"status", "ack"})


class FlakyProxy:
    """Runs in its own thread with its own event loop; `url` is what the agent dials."""

    def __init__(
        self,
        master_url: str,
        drop: float = 0.3,
        duplicate: float = 0.3,
        seed: int = 7,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` trusts the master's CA (its API is HTTPS: the proxy dials wss)."""
        ws = master_url.replace("http://", "ws://").replace("https://", "wss://")
        self.master_ws = ws + AGENT_STREAM_PATH
        self.ssl_context = ssl_context
        self.drop = drop
        self.duplicate = duplicate
        self.random = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlakyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._relay, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _relay(self, agent: ServerConnection) -> None:
        assert agent.request is not None
        headers = {"Authorization": agent.request.headers.get("Authorization", "")}
        context = self.ssl_context if self.master_ws.startswith("wss://") else None
        async with connect(self.master_ws, additional_headers=headers, ssl=context) as master:
            upstream = asyncio.create_task(self._pump(agent.recv, master.send))
            downstream = asyncio.create_task(self._pump(master.recv, agent.send))
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            for pump in (upstream, downstream):
                pump.cancel()
            if master.close_code is not None:
                await agent.close(master.close_code, master.close_reason or "")

    async def _pump(self, receive: Callable[[], Any], send: Callable[[str], Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                raw = await receive()
                kind = json.loads(raw).get("type")
                if kind in FAULTY_TYPES:
                    roll = self.random.random()
                    if roll < self.drop:
                        self.counts[f"dropped {kind}"] += 1
                        continue
                    if roll < self.drop + self.duplicate:
                        self.counts[f"duplicated {kind}"] += 1
                        await send(raw)
                await send(raw)
