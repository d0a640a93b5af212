"""The master's ASGI app: one FastAPI application serving every API and the agent stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse

import tessera
from tessera.clock import Clock
from tessera.http_errors import install_error_handlers
from tessera.master.api import marathon_v2, metronome_v1, native_v1
from tessera.master.config import MasterConfig
from tessera.master.core import Master
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.store import StateStore


def create_app(
    config: MasterConfig, store: StateStore | None = None, clock: Clock | None = None
) -> FastAPI:
    master = Master(config, store=store, clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await master.start()
        try:
            yield
        finally:
            await master.stop()

    app = FastAPI(
        title="Tessera master",
        version=tessera.__version__,
        description="Native API of the Tessera datacenter operating system.",
        lifespan=lifespan,
    )
    app.state.master = master
    install_error_handlers(app)
    app.include_router(native_v1.router)
    # Marathon v2 (services): its routers, the services controller and the event bus.
    marathon_v2.install(app, master)
    # Metronome v1 (jobs): its routers and the jobs controller.
    metronome_v1.install(app, master)

    @app.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        return "pong"

    @app.websocket(AGENT_STREAM_PATH)
    async def agent_stream(websocket: WebSocket) -> None:
        await master.channel.serve(websocket)

    return app
