"""The master's end of the agent stream: registration, heartbeats, launches and status updates.

Agents reach it over the mutual-TLS listener (master/agent_listener.py), which hands over the
agent id read from the verified client certificate: an agent registering under any other id
is closed (1008) and audited, and it may report status only for tasks placed on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from fastapi import WebSocketDisconnect

from tessera.clock import Clock
from tessera.master.config import MasterConfig
from tessera.master.state import ClusterState
from tessera.model.agent import Agent, AgentState, registered_containers
from tessera.model.health import apply_reported_health
from tessera.model.protocol import (
    CLOSE_DUPLICATE_AGENT,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REVOKED,
    CLOSE_UNREACHABLE,
    StatusUpdate,
)
from tessera.model.resources import ResourceFormatError, Resources
from tessera.model.task import Task, TaskState
from tessera.reconcile.task_status import apply_status, mark_lost
from tessera.security.ca import load_cert

log = logging.getLogger(__name__)

REGISTER_TIMEOUT = 10.0
# Mesos's reason for a task the master cannot launch as specified.
REASON_TASK_INVALID = "REASON_TASK_INVALID"

# The values of a task's secrets for its launch message (master/secrets.py `deliver`:
# [{"env" | "file": ..., "value": ...}]); raises with a message that names paths, never
# values, when they cannot be delivered.
SecretResolver: TypeAlias = Callable[[Task], Awaitable[list[dict[str, str]]]]
# A message built when its turn comes (a launch whose secrets are read from the store).
Deferred: TypeAlias = Callable[[], Awaitable[dict[str, Any] | None]]
# Signs renewed certificates: (agent id, PEM request, the channel's source address) ->
# (client, serving) PEM certificates.
Renewer: TypeAlias = Callable[[str, str, str | None], Awaitable[tuple[bytes, bytes]]]
# Records an agent-channel security event: (agent id, summary).
Auditor: TypeAlias = Callable[[str, str], Awaitable[None]]


class Link(Protocol):
    """One WebSocket to an agent: Starlette's WebSocket, or the TLS listener's adapter.
    Both raise WebSocketDisconnect when the agent is gone."""

    async def send_text(self, data: str) -> None: ...

    async def receive_text(self) -> str: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the TLS handshake proved: the agent id and serial of a verified certificate."""

    agent_id: str
    serial: int
    not_after: float  # wall-clock seconds
    source: str | None = None


class AgentSession:
    """One connected agent; messages to it go through a queue so sends never interleave."""

    def __init__(
        self, agent_id: str, websocket: Link, now: float, peer: PeerIdentity | None = None
    ) -> None:
        self.agent_id = agent_id
        self.websocket = websocket
        self.last_seen = now
        self.peer = peer
        self._outbox: asyncio.Queue[dict[str, Any] | Deferred | None] = asyncio.Queue()

    def send(self, message: dict[str, Any]) -> None:
        self._outbox.put_nowait(message)

    def send_deferred(self, build: Deferred) -> None:
        """Queue a message built when its turn comes, so that it keeps its place: a kill
        sent after a launch must never overtake it."""
        self._outbox.put_nowait(build)

    def close(self) -> None:
        self._outbox.put_nowait(None)

    async def pump(self) -> None:
        while (item := await self._outbox.get()) is not None:
            message = item if isinstance(item, dict) else await item()
            if message is not None:
                await self.websocket.send_text(json.dumps(message))


class AgentChannel:
    def __init__(
        self,
        state: ClusterState,
        config: MasterConfig,
        clock: Clock,
        on_change: Callable[[], None],
    ) -> None:
        self.state = state
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.sessions: dict[str, AgentSession] = {}
        # When each agent whose connection ended was last heard from: a dropped connection
        # (an agent restarting, a proxy recycling) is not a missed heartbeat, so the
        # liveness timeout still counts from its last message.
        self._last_heard: dict[str, float] = {}
        self.started_at = clock.monotonic()
        # Set by the master when secrets are available (master/secrets.py).
        self.resolve_secrets: SecretResolver | None = None
        # Set by the join API (master/api/join_v1.py): certificate renewal and the audit.
        self.renew: Renewer | None = None
        self.audit: Auditor | None = None

    # ---- sending -------------------------------------------------------------------

    def send_launch(self, task: Task) -> bool:
        session = self.sessions.get(task.agent_id or "")
        if session is None:
            return False
        if task.spec.secrets:
            # Only the agent the task is placed on ever gets its values, in this message.
            session.send_deferred(lambda: self._launch_with_secrets(task))
        else:
            session.send({"type": "launch", "task": launch_payload(task)})
        return True

    async def _launch_with_secrets(self, task: Task) -> dict[str, Any] | None:
        try:
            if self.resolve_secrets is None:
                raise LookupError("this master has no secret store")
            values = await self.resolve_secrets(task)
        except Exception as error:
            # The error names paths only (master/secrets.py); the task fails, visibly.
            log.warning("task %s: secrets not delivered: %s", task.id, error)
            await self._fail_launch(task, f"secrets not delivered: {error}")
            return None
        return {"type": "launch", "task": launch_payload(task), "secrets": values}

    async def _fail_launch(self, task: Task, message: str) -> None:
        current = self.state.tasks.get(task.id)
        if current is None:
            return
        update = StatusUpdate(
            uuid=str(uuid.uuid4()),
            task_id=task.id,
            state=TaskState.TASK_FAILED,
            timestamp=self.clock.wall(),
            reason=REASON_TASK_INVALID,
            message=message,
        )
        failed = apply_status(current, update, self.clock.wall())
        if failed is not None:
            await self.state.save(tasks=[failed])
            self.on_change()

    def send_kill(self, task: Task) -> bool:
        session = self.sessions.get(task.agent_id or "")
        if session is None:
            return False
        session.send({"type": "kill", "task_id": task.id, "grace": task.spec.kill_grace_seconds})
        return True

    def last_seen(self, agent_id: str) -> float:
        session = self.sessions.get(agent_id)
        if session is not None:
            return session.last_seen
        if agent_id in self._last_heard:
            return self._last_heard[agent_id]
        # An agent the master has not heard from since it started gets the
        # re-registration window, measured from the master's start.
        return self.started_at + self.config.reregistration_timeout

    def disconnect(self, agent_id: str) -> None:
        session = self.sessions.pop(agent_id, None)
        if session is not None:
            self._last_heard[agent_id] = session.last_seen
            session.close()
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(
                    session.websocket.close(CLOSE_UNREACHABLE, "missed heartbeats")
                )

    def drop(self, agent_id: str, reason: str) -> None:
        """End the agent's session (its certificate was revoked): it may not come back."""
        session = self.sessions.pop(agent_id, None)
        if session is not None:
            self._last_heard[agent_id] = session.last_seen
            session.close()
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(
                    session.websocket.close(CLOSE_REVOKED, reason[:120])
                )

    def close_all(self, code: int, reason: str) -> None:
        """End every agent session (this master stops leading: agents dial the next one)."""
        for agent_id in list(self.sessions):
            session = self.sessions.pop(agent_id)
            self._last_heard[agent_id] = session.last_seen
            session.close()
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(session.websocket.close(code, reason))

    # ---- serving -------------------------------------------------------------------

    async def serve(self, websocket: Link, peer: PeerIdentity | None) -> None:
        """One agent's session; `peer` is its verified certificate's identity (None only for
        in-process tests of the channel)."""
        try:
            raw = await asyncio.wait_for(websocket.receive_text(), REGISTER_TIMEOUT)
            message = json.loads(raw)
            if message.get("type") != "register":
                raise ValueError("the first message must be register")
            agent = self._agent_from_registration(message)
        except (TimeoutError, ValueError, KeyError, TypeError, ResourceFormatError) as error:
            await websocket.close(CLOSE_PROTOCOL_ERROR, f"bad registration: {error}"[:120])
            return
        except WebSocketDisconnect:
            return
        if peer is not None and agent.id != peer.agent_id:
            log.warning(
                "agent %s (by its certificate) tried to register as agent %s: closed",
                peer.agent_id,
                agent.id,
            )
            if self.audit is not None:
                await self.audit(
                    peer.agent_id, f"agent {peer.agent_id} tried to register as agent {agent.id}"
                )
            await websocket.close(CLOSE_POLICY, "the certificate is for another agent")
            return
        if agent.id in self.sessions:
            await websocket.close(
                CLOSE_DUPLICATE_AGENT,
                f"agent ID {agent.id} is already registered and connected; "
                "each agent needs its own --work-dir",
            )
            return
        session = AgentSession(agent.id, websocket, self.clock.monotonic(), peer)
        self.sessions[agent.id] = session
        pump = asyncio.create_task(session.pump())
        try:
            await self._register(session, agent, message.get("tasks", []))
            await self._receive(session)
        except WebSocketDisconnect:
            pass
        finally:
            if self.sessions.get(agent.id) is session:
                del self.sessions[agent.id]
                self._last_heard[agent.id] = session.last_seen
            session.close()
            with contextlib.suppress(Exception):
                await pump

    def _agent_from_registration(self, message: dict[str, Any]) -> Agent:
        now = self.clock.wall()
        agent_id = str(message["agent_id"])
        if not agent_id:
            raise ValueError("agent_id is empty")
        previous = self.state.agents.get(agent_id)
        return Agent(
            id=agent_id,
            hostname=str(message["hostname"]),
            resources=Resources.from_json(message["resources"]),
            attributes={str(k): str(v) for k, v in message.get("attributes", {}).items()},
            # A drained agent that restarts stays out of service until it is reactivated.
            state=AgentState.DRAINING if previous and previous.drain else AgentState.ACTIVE,
            registered_at=previous.registered_at if previous else now,
            http_url=message.get("http_url"),
            last_seen_at=now,
            isolation=message.get("isolation", {}),
            version=message.get("version"),
            containers=registered_containers(message.get("containers")),
            drain=previous.drain if previous else None,
        )

    async def _register(
        self, session: AgentSession, agent: Agent, reported: list[dict[str, Any]]
    ) -> None:
        now = self.clock.wall()
        reported_ids = {str(entry["task_id"]) for entry in reported}
        changed: list[Task] = []
        strangers: list[str] = []
        for entry in reported:
            task = self.state.tasks.get(str(entry["task_id"]))
            if task is None:
                # A task no one asked for (e.g. launched before a lost master write, or a
                # store restored from a backup): nothing may run that the master does not
                # know about. Killed once the agent has its registration answer.
                strangers.append(str(entry["task_id"]))
            elif task.state.terminal and entry.get("state") and not _ended(entry["state"]):
                # Still running where the master has it ended (given up while its agent was
                # away): it must not come back as an extra instance.
                strangers.append(task.id)
            elif (
                task.state is TaskState.TASK_UNREACHABLE
                and entry.get("state")
                and not TaskState(entry["state"]).terminal
            ):
                # Back and still running. An end it reached meanwhile comes as its own
                # status update, with the exit code and message this entry lacks.
                back = task.with_changes(state=TaskState(entry["state"]), updated_at=now)
                changed.append(apply_reported_health(back, entry))
            elif (checked := apply_reported_health(task, entry)) is not task:
                changed.append(checked)  # its health changed while no master listened
        for task in self.state.active_tasks_on(agent.id):
            if task.id in reported_ids:
                continue
            if task.state is TaskState.TASK_STAGING:
                continue  # never reached the agent: launched again below
            changed.append(mark_lost(task, "agent re-registered without this task", now))
        await self.state.save(tasks=changed, agents=[agent])
        session.send(
            {
                "type": "registered",
                "agent_id": agent.id,
                "heartbeat_interval": self.config.heartbeat_interval,
            }
        )
        for task_id in strangers:
            log.warning("agent %s runs unknown or ended task %s: killing it", agent.id, task_id)
            session.send({"type": "kill", "task_id": task_id, "grace": 3.0})
        for task in self.state.active_tasks_on(agent.id):
            if task.state is TaskState.TASK_STAGING and task.id not in reported_ids:
                self.send_launch(task)
            elif task.state is TaskState.TASK_KILLING:
                self.send_kill(task)
        log.info("agent %s registered from %s (%d tasks)", agent.id, agent.hostname, len(reported))
        self.on_change()

    async def _receive(self, session: AgentSession) -> None:
        while True:
            message = json.loads(await session.websocket.receive_text())
            session.last_seen = self.clock.monotonic()
            peer = session.peer
            if peer is not None and self.clock.wall() > peer.not_after:
                # The agent did not renew in time: it must join again.
                await session.websocket.close(CLOSE_POLICY, "the agent certificate has expired")
                return
            kind = message.get("type")
            if kind == "status":
                await self._on_status(session, StatusUpdate.from_json(message))
            elif kind == "renew":
                await self._on_renew(session, str(message.get("csr", "")))
            elif kind != "heartbeat":
                log.warning("agent %s sent unknown message type %r", session.agent_id, kind)

    async def _on_renew(self, session: AgentSession, csr: str) -> None:
        peer = session.peer
        if peer is None or self.renew is None:
            session.send({"type": "renewal-refused", "message": "no certificate to renew"})
            return
        try:
            cert, serving = await self.renew(peer.agent_id, csr, peer.source)
        except ValueError as error:  # CsrRefused among them
            session.send({"type": "renewal-refused", "message": str(error)[:200]})
            return
        # The session lives as long as the newest certificate the agent holds.
        not_after = load_cert(cert).not_valid_after_utc.timestamp()
        session.peer = PeerIdentity(peer.agent_id, peer.serial, not_after, peer.source)
        session.send(
            {
                "type": "certificate",
                "certificate": cert.decode(),
                "serving_certificate": serving.decode(),
            }
        )
        log.info("agent %s renewed its certificate", peer.agent_id)

    async def _on_status(self, session: AgentSession, update: StatusUpdate) -> None:
        task = self.state.tasks.get(update.task_id)
        if task is not None and task.agent_id == session.agent_id:
            updated = apply_status(task, update, self.clock.wall())
            if updated is not None:
                await self.state.save(tasks=[updated])
                if updated.state.terminal:
                    self.on_change()
        # Acknowledge even unknown or duplicate updates, or the agent resends them forever.
        session.send({"type": "ack", "uuid": update.uuid, "task_id": update.task_id})


def _ended(state: str) -> bool:
    try:
        return TaskState(state).terminal
    except ValueError:
        return False


def launch_payload(task: Task) -> dict[str, Any]:
    return {"id": task.id, "spec": task.spec.to_json(), "ports": list(task.ports)}
