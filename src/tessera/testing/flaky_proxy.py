"""A proxy on the agent channel that drops and duplicates status updates and
acknowledgements: the injectable unreliable transport of the fault suite.

The channel is mutual TLS end to end, so the proxy stands in for both sides with a joined
agent's own credentials: the agent dials the proxy as its master (`--master proxy.url`), the
proxy answers its channel discovery (`GET /ca/dcos-ca.crt`, announcing itself as the channel)
with the agent's serving certificate, and relays the channel to the master's listener with the
agent's client certificate. The agent must have joined before (its `tls/` directory exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tessera.agent.join import AGENT_URL_HEADER, credentials
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.security.ca import server_context

FAULTY_TYPES = frozenset({"status", "ack"})


class FlakyProxy:
    """Runs in its own thread with its own event loop; `url` is what the agent dials."""

    def __init__(
        self,
        channel_url: str,
        agent_work_dir: Path,
        drop: float = 0.3,
        duplicate: float = 0.3,
        seed: int = 7,
    ) -> None:
        """`channel_url`: the master's agent channel (wss://host:agent-port/v1/agent/stream)."""
        self.channel_url = channel_url
        self.credentials = credentials(agent_work_dir)
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
        return f"https://127.0.0.1:{self.port}"

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
        # The agent's serving certificate names 127.0.0.1 and chains to the cluster CA the
        # agent trusts.
        context = server_context(self.credentials.serving_path, self.credentials.key_path)
        async with serve(
            self._relay, "127.0.0.1", 0, ssl=context, process_request=self._discovery
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _discovery(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP requests: the CA, naming this proxy as the channel; anything else 404.
        WebSocket upgrades to the channel path go on to the relay."""
        if (
            request.path == AGENT_STREAM_PATH
            and "upgrade" in request.headers.get("Connection", "").lower()
        ):
            return None
        if request.path != "/ca/dcos-ca.crt":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        response = connection.respond(
            HTTPStatus.OK, self.credentials.ca_path.read_text(encoding="ascii")
        )
        response.headers[AGENT_URL_HEADER] = f"wss://127.0.0.1:{self.port}{AGENT_STREAM_PATH}"
        return response

    async def _relay(self, agent: ServerConnection) -> None:
        # Read afresh for each connection: the agent may have renewed its certificate.
        context = self.credentials.client_context()
        async with connect(self.channel_url, ssl=context) as master:
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
