"""The agent channel's own listener: WebSockets over mutual TLS with the cluster CA.

A separate port (`tessera master --agent-port`, 5052) served by the `websockets` library and
not by uvicorn, because the master must know which certificate an agent presented and uvicorn
does not expose it (docs/security.md). The ssl context requires a client certificate from the
cluster CA, so a client without one, or with another CA's, is cut off in the handshake; the
agent id then comes from the verified certificate, and a revoked serial is closed at once.
Every master serves it; one that does not lead closes with CLOSE_NOT_LEADER naming the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from fastapi import WebSocketDisconnect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tessera.http_errors import ApiError
from tessera.master.agent_channel import PeerIdentity
from tessera.master.serving_cert import api_names
from tessera.model.protocol import (
    AGENT_STREAM_PATH,
    CLOSE_NOT_LEADER,
    CLOSE_POLICY,
    CLOSE_REVOKED,
)
from tessera.security.audit_chain import Decision, EventKind
from tessera.security.ca import (
    CertificateRefused,
    ClusterCA,
    agent_id_of_peercert,
    master_serving_cert,
    mutual_server_context,
    serial_of_peercert,
)
from tessera.store import NotLeader, StoreUnavailable

if TYPE_CHECKING:
    from tessera.master.core import Master
    from tessera.master.join import JoinService

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
# How often a master without the cluster's keys yet (a new cluster's follower) looks again.
CA_POLL_SECONDS = 0.5


class WebSocketLink:
    """A `websockets` connection seen as the agent channel's Link."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection

    async def send_text(self, data: str) -> None:
        try:
            await self.connection.send(data)
        except ConnectionClosed as closed:
            raise WebSocketDisconnect(closed.rcvd.code if closed.rcvd else 1006) from None

    async def receive_text(self) -> str:
        try:
            message = await self.connection.recv()
        except ConnectionClosed as closed:
            raise WebSocketDisconnect(closed.rcvd.code if closed.rcvd else 1006) from None
        return message if isinstance(message, str) else message.decode()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.connection.close(code, reason or "")


class AgentListener:
    def __init__(self, master: Master, joins: JoinService) -> None:
        self.master = master
        self.joins = joins
        self.port: int | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agent listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        ca = await self._wait_for_ca()
        log.info("cluster CA pin: %s", ca.pin)
        context = self._context(ca)
        config = self.master.config
        server: Server
        try:
            server = await serve(
                self._handle,
                config.bind,
                config.agent_port,
                ssl=context,
                max_size=2**24,
                # The agent pings; the master's liveness check counts its heartbeats.
                ping_interval=None,
                close_timeout=2,
            )
        except OSError as error:
            log.error(
                "!!! the agent channel cannot listen on port %d: %s", config.agent_port, error
            )
            return
        async with server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.ready.set()
            log.info("agent channel listening on %s:%d (mutual TLS)", config.bind, self.port)
            await asyncio.Future()

    async def _wait_for_ca(self) -> ClusterCA:
        while True:
            try:
                return await self.joins.ca()
            except (ApiError, StoreUnavailable, NotLeader):
                await asyncio.sleep(CA_POLL_SECONDS)

    def _context(self, ca: ClusterCA) -> ssl.SSLContext:
        config = self.master.config
        pair = master_serving_cert(ca, api_names(config), self.master.clock)
        return mutual_server_context(pair.cert_pem(), pair.key_pem(), ca.cert_pem())

    async def _handle(self, connection: ServerConnection) -> None:
        link = WebSocketLink(connection)
        master = self.master
        request = connection.request
        if request is None or request.path != AGENT_STREAM_PATH:
            await link.close(CLOSE_POLICY, "not the agent stream")
            return
        if not master.leading:
            await link.close(CLOSE_NOT_LEADER, (master.leader_url() or "")[:120])
            return
        peercert: Any = connection.transport.get_extra_info("peercert")
        address = connection.remote_address
        source = str(address[0]) if address else None
        try:
            peer = PeerIdentity(
                agent_id_of_peercert(peercert or {}),
                serial_of_peercert(peercert or {}),
                ssl.cert_time_to_seconds(peercert["notAfter"]),
                source,
            )
        except (CertificateRefused, KeyError, TypeError, ValueError) as error:
            await link.close(CLOSE_POLICY, f"not an agent certificate: {error}"[:120])
            return
        try:
            if (await self.joins.revocations()).is_revoked(peer.serial):
                log.warning("agent %s presented a revoked certificate", peer.agent_id)
                await master.audit.record_event(
                    EventKind.CERTIFICATE,
                    None,
                    f"agent:{peer.agent_id}",
                    f"agent {peer.agent_id} refused: revoked certificate {peer.serial:x}",
                    action="use",
                    source=source,
                    decision=Decision.DENY,
                )
                await link.close(CLOSE_REVOKED, "this agent's certificate was revoked")
                return
            await master.channel.serve(link, peer)
        except NotLeader:
            with contextlib.suppress(Exception):
                await link.close(CLOSE_NOT_LEADER, "")
        except StoreUnavailable as error:
            log.warning("agent stream closed: store unavailable: %s", error)
            with contextlib.suppress(Exception):
                await link.close(CLOSE_TRY_AGAIN_LATER, "store unavailable")


async def audit_impersonation(master: Master, agent_id: str, summary: str) -> None:
    await master.audit.record_event(
        EventKind.CERTIFICATE,
        None,
        f"agent:{agent_id}",
        summary,
        action="register",
        decision=Decision.DENY,
    )
