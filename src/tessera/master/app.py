"""The master's ASGI app: one FastAPI application serving every API and the agent stream."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

import tessera
from tessera.clock import Clock
from tessera.http_errors import install_error_handlers
from tessera.master.api import (
    audit_v1,
    drain_v1,
    iam_v1,
    join_v1,
    marathon_v2,
    metronome_v1,
    native_v1,
    quotas_v1,
    rebalance_v1,
    sandbox_v1,
    secrets_v1,
)
from tessera.master.api.schemas import publish_request_schemas
from tessera.master.audit import AuditMiddleware
from tessera.master.body_limit import BodyLimit
from tessera.master.config import MasterConfig
from tessera.master.core import Master
from tessera.master.leader_proxy import FORWARD_TIMEOUT, LeaderProxy
from tessera.master.serving_cert import ca_file
from tessera.security.ca import cli_client_context
from tessera.store import NotLeader, StateStore, StoreUnavailable

log = logging.getLogger(__name__)

# RFC 6455's "try again later": the agent dials again (this or its next master).
CLOSE_TRY_AGAIN_LATER = 1013


def create_app(
    config: MasterConfig, store: StateStore | None = None, clock: Clock | None = None
) -> FastAPI:
    master = Master(config, store=store, clock=clock)
    # Only masters that can follow get the proxy: a lone master's requests take no detour.
    forwarder = None
    if master.leadership is not None:
        forwarder = httpx.AsyncClient(timeout=FORWARD_TIMEOUT, verify=_cluster_trust(config))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await master.start()
        await agents.start()
        try:
            yield
        finally:
            await agents.stop()
            await master.stop()
            if forwarder is not None:
                await forwarder.aclose()

    app = FastAPI(
        title="Tessera master",
        version=tessera.__version__,
        description="Native API of the Tessera datacenter operating system.",
        lifespan=lifespan,
        # Every route, these too, goes through the auth dependency: served below.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(master.auth.authorize)],
    )
    app.state.master = master
    install_error_handlers(app)
    install_store_error_handlers(app)
    # Inside the leader proxy: a forwarded request is recorded once, by the leader.
    app.add_middleware(AuditMiddleware, audit=master.audit)
    app.add_middleware(BodyLimit)
    if forwarder is not None:
        app.add_middleware(
            LeaderProxy,
            leader_url=master.leader_url,
            self_url=lambda: master.url,
            http=forwarder,
        )
    app.include_router(native_v1.router)
    # Marathon v2 (services): its routers, the services controller and the event bus.
    services = marathon_v2.install(app, master)
    drains = drain_v1.install(app, master, services)
    rebalance_v1.install(app, master, services, drains, config)
    # Metronome v1 (jobs): its routers and the jobs controller.
    metronome_v1.install(app, master)

    iam_v1.install(app, master)
    secrets_v1.install(app, master)
    audit_v1.install(app, master)
    quotas_v1.install(app, master)
    sandbox_v1.install(app, master)
    agents = join_v1.install(app, master)  # join tokens, /v1/join, the agent TLS listener

    @app.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        return "pong"

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    # Last: the request bodies of every route above, in /openapi.json.
    publish_request_schemas(app)
    return app


def _cluster_trust(config: MasterConfig) -> ssl.SSLContext | bool:
    """The leader proxy reaches the other masters over HTTPS, trusting the cluster CA only
    (written by `tessera master` before it serves; absent in in-process tests)."""
    path = ca_file(config)
    return cli_client_context(path) if path.exists() else True


def install_store_error_handlers(app: FastAPI) -> None:
    """A store that cannot answer, or a term that ended under a request: retry later."""

    @app.exception_handler(NotLeader)
    async def on_not_leader(_: Request, exc: NotLeader) -> JSONResponse:
        message = "this master is no longer the leader; retry (another master takes over)"
        return JSONResponse({"message": message}, status_code=503)

    @app.exception_handler(StoreUnavailable)
    async def on_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"message": f"store unavailable, retry later: {exc}"}, 503)
