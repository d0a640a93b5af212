"""Simulated agents for benchmarks: they speak the real agent protocol to a real master
(register, heartbeat, status updates with acknowledgements) but run no processes. A launch
is answered with TASK_RUNNING at once, a kill with TASK_KILLED.

One asyncio loop carries hundreds of them, so a benchmark can put a master in front of a
cluster far larger than this machine. Given a join token (`tsr1....`, one multi-use token for
the fleet) each joins like a real agent: a key and a request made in memory, certificates from
`POST /v1/join`, then the mutual-TLS agent channel. `die()` makes one go silent the way a
dead host does:
no close frame, no more heartbeats, its tasks gone with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tessera.agent.join import AGENT_URL_HEADER, channel_url
from tessera.model.protocol import StatusUpdate
from tessera.model.task import TaskState
from tessera.security.ca import agent_client_context, csr_pem, key_pem, new_key

log = logging.getLogger(__name__)


@dataclass
class SimAgent:
    """One simulated agent. `masters` are tried in turn, like the real agent's."""

    agent_id: str
    hostname: str
    masters: list[str]
    join_token: str
    resources: dict[str, Any]
    attributes: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    pending: dict[str, StatusUpdate] = field(default_factory=dict)
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    # Trusts the cluster CA (`Cluster.ssl_context`) for the masters' HTTPS API.
    verify: ssl.SSLContext | bool = True
    _connection: ClientConnection | None = None
    _runner: asyncio.Task[None] | None = None
    _tls: ssl.SSLContext | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"sim-{self.agent_id}")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def die(self) -> None:
        """The host is gone: its tasks with it, and silence on the wire. The connection
        stays open (a dead host sends no FIN or RST); the master must notice the missing
        heartbeats."""
        self.dead = True
        self.tasks.clear()
        self.pending.clear()

    async def _run(self) -> None:
        delay = 0.2
        while not self.dead:
            for master in self.masters:
                try:
                    await self._session(master)
                    delay = 0.2
                except (
                    OSError,
                    ConnectionClosed,
                    InvalidStatus,
                    TimeoutError,
                    httpx.HTTPError,
                ) as error:
                    log.debug("%s: master %s: %s", self.agent_id, master, error)
                finally:
                    self.registered.clear()
                    self._connection = None
                if self.dead:
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _join(self, master: str) -> ssl.SSLContext:
        """Certificates for this agent, from `POST /v1/join` (the key stays in memory)."""
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tessera agent")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject)
        body = {
            "token": self.join_token,
            "csr": csr_pem(csr.sign(key, hashes.SHA256())).decode(),
            "hostname": self.hostname,
            "agent_id": self.agent_id,
        }
        async with httpx.AsyncClient(timeout=30, verify=self.verify) as http:
            response = await http.post(master.rstrip("/") + "/v1/join", json=body)
        if response.status_code != 200:
            raise OSError(f"join refused: {response.status_code} {response.text[:200]}")
        answer = response.json()
        self.agent_id = str(answer["agent_id"])
        return agent_client_context(
            answer["ca"].encode(), answer["certificate"].encode(), key_pem(key)
        )

    async def _channel(self, master: str) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
        if self._tls is None:
            self._tls = await self._join(master)
        async with httpx.AsyncClient(timeout=10, verify=self.verify) as http:
            response = await http.get(master.rstrip("/") + "/ca/dcos-ca.crt")
        return channel_url(master, response.headers.get(AGENT_URL_HEADER, "")), {}, self._tls

    async def _session(self, master: str) -> None:
        url, headers, context = await self._channel(master)
        async with connect(
            url, additional_headers=headers, open_timeout=5, ssl=context
        ) as connection:
            await connection.send(json.dumps(self._registration()))
            reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
            while reply.get("type") == "kill":  # a master may kill strangers first
                await self._on_message(connection, reply)
                reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
            if reply.get("type") != "registered":
                raise OSError(f"unexpected reply to registration: {reply.get('type')!r}")
            interval = float(reply.get("heartbeat_interval", 5.0))
            self._connection = connection
            self.registered.set()
            for update in list(self.pending.values()):
                await connection.send(json.dumps(update.to_json()))
            beat = asyncio.create_task(self._heartbeats(connection, interval))
            try:
                async for raw in connection:
                    await self._on_message(connection, json.loads(raw))
            finally:
                beat.cancel()

    def _registration(self) -> dict[str, Any]:
        return {
            "type": "register",
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "resources": self.resources,
            "attributes": self.attributes,
            "http_url": None,
            "isolation": {"simulated": True},
            "version": "sim",
            "tasks": [
                {"task_id": task_id, "state": state.value} for task_id, state in self.tasks.items()
            ],
        }

    async def _heartbeats(self, connection: ClientConnection, interval: float) -> None:
        while not self.dead:
            await asyncio.sleep(interval)
            if self.dead:
                return
            await connection.send('{"type": "heartbeat"}')
            for update in list(self.pending.values()):
                await connection.send(json.dumps(update.to_json()))

    async def _on_message(self, connection: ClientConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if self.dead:
            return
        if kind == "launch":
            task_id = str(message["task"]["id"])
            self.tasks[task_id] = TaskState.TASK_RUNNING
            await self._report(connection, task_id, TaskState.TASK_RUNNING, healthy=True)
        elif kind == "kill":
            task_id = str(message["task_id"])
            self.tasks.pop(task_id, None)
            await self._report(connection, task_id, TaskState.TASK_KILLED)
        elif kind == "ack":
            self.pending.pop(str(message["uuid"]), None)

    async def _report(
        self,
        connection: ClientConnection,
        task_id: str,
        state: TaskState,
        healthy: bool | None = None,
    ) -> None:
        update = StatusUpdate(
            uuid=str(uuid.uuid4()),
            task_id=task_id,
            state=state,
            timestamp=time.time(),
            healthy=healthy,
        )
        self.pending[update.uuid] = update
        with contextlib.suppress(ConnectionClosed):
            await connection.send(json.dumps(update.to_json()))


def fleet(
    count: int,
    masters: list[str],
    join_token: str,
    resources: dict[str, Any],
    zones: int = 1,
    verify: ssl.SSLContext | bool = True,
) -> list[SimAgent]:
    """`count` simulated agents named sim-000 ..., spread over `zones` zones."""
    return [
        SimAgent(
            agent_id=f"sim-{index:04d}",
            hostname=f"sim-{index:04d}.local",
            masters=masters,
            join_token=join_token,
            resources=resources,
            attributes={"zone": f"zone-{index % zones}"},
            verify=verify,
        )
        for index in range(count)
    ]
