"""Running the daemons in the foreground: `tessera master` and `tessera agent`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from tessera.agent.config import AgentConfig
from tessera.agent.daemon import AgentDaemon, AgentRefused
from tessera.agent.http_api import create_agent_app
from tessera.agent.join import JoinFailed
from tessera.clock import SystemClock
from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.master.core import Master
from tessera.master.keys import ClusterKeyError
from tessera.master.serving_cert import ServingFiles, ensure_serving_cert
from tessera.security.ca import server_context
from tessera.store import MemoryStore, StateStore, open_store

log = logging.getLogger("tessera")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per forwarded request would drown a follower's log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


# `tessera master` exits with this when its leadership (etcd) ended: its supervisor starts
# it again, and it rejoins as a follower with nothing left over from its term.
EXIT_LEADERSHIP_LOST = 75


def run_master(config: MasterConfig, log_level: str = "info") -> int:
    """Serve until SIGTERM or SIGINT (exit code 0; uvicorn drains requests and runs the
    shutdown hooks) or until this master's leadership ends (EXIT_LEADERSHIP_LOST)."""
    # A memory store lives only in this process: the keys made for the certificate must be
    # the ones the master then serves with.
    store = MemoryStore() if config.store == "memory" else None
    tls: ServingFiles | None = None
    if not config.insecure_no_auth:
        try:
            tls = asyncio.run(_serving_files(config, store))
        except ClusterKeyError as error:
            log.error("%s", error)
            return 2
    app = create_app(config, store=store)
    master: Master = app.state.master
    server_config = uvicorn.Config(
        app,
        host=config.bind,
        port=config.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=3,
        ws_ping_interval=None,
        # "on", not "auto": a master that fails to start must say why and exit, not serve
        # without its controllers.
        lifespan="on",
        # HTTPS with the cluster CA's certificate, TLS 1.2 or newer (security/ca.py).
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        ssl_context_factory=(lambda *_: server_context(tls.cert, tls.key)) if tls else None,
    )
    server = MasterServer(server_config)

    def term_ended(reason: str) -> None:
        log.error("exiting with code %d: %s", EXIT_LEADERSHIP_LOST, reason)
        server.should_exit = True

    master.on_term_end = term_ended
    log.info(
        "master listening on %s://%s:%d (work dir %s)",
        config.scheme,
        config.bind,
        config.port,
        config.work_dir,
    )
    server.run()
    return 0 if master.lost_reason is None else EXIT_LEADERSHIP_LOST


class MasterServer(uvicorn.Server):
    """uvicorn, with idle TLS connections cut at once when it stops.

    Closing a TLS connection waits for the client's close_notify, which a client idle in a
    connection pool never sends: every idle keep-alive connection would hold the graceful
    stop (and so the handover of the leadership, which comes after it) until its timeout.
    Requests in progress still drain as before."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", _NOT_HTTP)  # HTTP protocols only
            transport = getattr(connection, "transport", None)
            idle = cycle is None or getattr(cycle, "response_complete", False)
            if cycle is not _NOT_HTTP and idle and transport is not None:
                transport.abort()
        await super().shutdown(sockets)


_NOT_HTTP = object()


async def _serving_files(config: MasterConfig, store: StateStore | None) -> ServingFiles:
    """Before uvicorn starts: the cluster's keys from the store (created on a new cluster) and
    the API's certificate signed by its CA (master/serving_cert.py)."""
    opened = store or open_store(config.store, config.work_dir)
    try:
        return await ensure_serving_cert(config, opened, SystemClock())
    finally:
        if store is None:
            await opened.close()


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a program that handles its own signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_agent(config: AgentConfig) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the process exit code."""
    try:
        daemon = AgentDaemon(config)
    except JoinFailed as refused:
        log.error("%s", refused)
        return 2
    isolation = daemon.executor.isolation_info()
    if isolation.get("warning"):
        log.warning("!!! %s", isolation["warning"])
    else:
        log.info("isolation: %s", isolation)
    containers = daemon.containers
    why_not = containers.unavailable() if containers else "no runtime configured"
    if containers is None or why_not:
        log.warning("containers cannot run on this agent: %s", why_not)
    else:
        log.info("containers: %s", containers.info())
        bridge_why = containers.network.unavailable() if containers.network else "not configured"
        if bridge_why:
            log.warning("no bridge networking for containers: %s", bridge_why)
    await daemon.recover()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config.http_bind, config.http_port))
    host, port = listener.getsockname()[:2]
    daemon.http_url = f"https://{host}:{port}"
    server = _EmbeddedServer(
        uvicorn.Config(
            create_agent_app(daemon),
            log_level="warning",
            lifespan="off",
            # HTTPS with the serving certificate the cluster CA signed at join (renewed over
            # the agent channel and loaded into the same context).
            ssl_context_factory=lambda *_: daemon.serving_context,
        )
    )
    http = asyncio.create_task(server.serve(sockets=[listener]))
    connection = asyncio.create_task(daemon.run())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopper = asyncio.create_task(stop.wait())
    log.info("agent %s serving sandboxes on %s", daemon.agent_id, daemon.http_url)
    await asyncio.wait({connection, stopper}, return_when=asyncio.FIRST_COMPLETED)

    code = 0
    if connection.done() and not connection.cancelled():
        error = connection.exception()
        if isinstance(error, AgentRefused):
            log.error("%s", error)
            code = 2
        elif error is not None:
            log.error("agent stopped: %r", error)
            code = 1
    stopper.cancel()
    if not connection.done():
        connection.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection
    await daemon.shutdown()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await http
    log.info("agent %s stopped", daemon.agent_id)
    return code
