"""The agent daemon: dials the master, registers, heartbeats, runs what it is told to run and
reports every status change at least once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import tessera
from tessera.agent.config import AgentConfig
from tessera.agent.containers.runtime import ContainerLaunch, ContainerRuntime
from tessera.agent.containers.setup import build_runtime, container_launch, port_maps
from tessera.agent.disk import write_atomic
from tessera.agent.environment import task_environment
from tessera.agent.exec_types import REASON_CONTAINER_LAUNCH_FAILED
from tessera.agent.executor import Executor, LaunchFailed, LaunchSpec, TaskExit
from tessera.agent.fetch import FetchFailed, fetch_all
from tessera.agent.health import REASON_HEALTH_UPDATED, CheckedTask, HealthMonitors
from tessera.agent.images.errors import PullFailed
from tessera.agent.join import Credentials, credentials, discover_channel, join
from tessera.agent.journal import NotDurable, StatusJournal
from tessera.agent.secret_files import SecretFileError, remove_secret_files, write_secret_files
from tessera.agent.task_users import UidRange
from tessera.clock import Clock, SystemClock
from tessera.model.health import fetch_of
from tessera.model.protocol import (
    CLOSE_BAD_TOKEN,
    CLOSE_DUPLICATE_AGENT,
    CLOSE_NOT_LEADER,
    CLOSE_POLICY,
    CLOSE_REVOKED,
    LaunchSecrets,
    StatusUpdate,
)
from tessera.model.task import TaskSpec, TaskState
from tessera.security.ca import CertificateRefused, agent_id_of, load_cert

log = logging.getLogger(__name__)

# Mesos's reason for a task that cannot be launched as it was sent.
REASON_SECRETS = "REASON_TASK_INVALID"

# Unacknowledged updates are sent again after this long, or two heartbeats when those come
# faster (the master may have missed them).
RESEND_AFTER = 5.0
# While masters answer "not the leader" an election is under way (or just over): the next
# round comes this soon, however long the back-off after unreachable masters has grown.
NOT_LEADER_RETRY = 0.25
# Never give up on a master's pong sooner: a busy master's event loop may stall briefly.
PING_TIMEOUT_MIN = 5.0
# How long closing a connection to an unresponsive master may wait for its answer.
CLOSE_TIMEOUT = 2.0
# A renewal the master refused (or did not answer) is asked for again this much later.
RENEW_RETRY = 30.0


class AgentRefused(Exception):
    """The master refused this agent for a reason retrying cannot fix (token, duplicate ID)."""


class NotLeading(Exception):
    """The master dialled does not lead; `leader` is the URL it named, if it knows one."""

    def __init__(self, master: str, leader: str) -> None:
        super().__init__(f"{master} does not lead (leader: {leader or 'none yet'})")
        self.leader = leader


@dataclass
class LocalTask:
    task_id: str
    state: TaskState
    ports: tuple[int, ...] = ()
    # A kill that came while the executor was starting the task: applied once it runs.
    kill_pending: bool = False
    kill_grace: float | None = None


def _failure(error: Exception) -> str:
    if isinstance(error, PullFailed):
        return f"image pull failed: {error.message}"
    return str(error)


def joined_agent_id(config: AgentConfig) -> str:
    """The agent's id from its certificate, joining the cluster first if it has none."""
    creds = credentials(config.work_dir)
    path = config.work_dir / "agent-id"
    if not creds.exists():
        known = path.read_text().strip() if path.exists() else None
        join(
            config.masters,
            config.work_dir,
            config.join_token.strip(),
            config.hostname,
            known,
            config.ca_pin,
            config.ca_file,
        )
    agent_id = agent_id_of(load_cert(creds.cert_path.read_bytes()))
    if not path.exists() or path.read_text().strip() != agent_id:
        write_atomic(path, agent_id + "\n", 0o644)
    return agent_id


class AgentDaemon:
    def __init__(
        self, config: AgentConfig, executor: Executor | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self.agent_id = joined_agent_id(config)
        self.credentials: Credentials = credentials(config.work_dir)
        # The sandbox API's HTTPS context (cli/daemons.py serves with it); a renewed serving
        # certificate is loaded into it.
        self.serving_context = self.credentials.serving_context()
        self.executor = executor or Executor(
            config.work_dir,
            cgroup_prefix=f"tessera/{self.agent_id}",
            default_user=config.task_user,
            isolation=config.isolation,
            task_uids=UidRange(config.task_uid_first, config.task_uid_count),
            containers=build_runtime(config),
        )
        self.containers: ContainerRuntime | None = self.executor.containers
        self.journal = StatusJournal(config.work_dir / "journal")
        self.tasks: dict[str, LocalTask] = {}
        self.http_url: str | None = None
        self.heartbeat_interval = 5.0
        self._connection: ClientConnection | None = None
        self._sent_at: dict[str, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        # The secret files written into each task's sandbox, removed when the task ends.
        self._secret_files: dict[str, list[Path]] = {}
        self.registered = asyncio.Event()
        # Health and readiness checks of the running tasks (see agent/health.py).
        self.health = HealthMonitors(
            config.work_dir / "health", self._report_health, self._kill_unhealthy, self.clock
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt the tasks still running from before a restart of this agent."""
        recovered_tasks = await self.executor.recover()
        for recovered in recovered_tasks:
            self.tasks[recovered.task_id] = LocalTask(recovered.task_id, TaskState.TASK_RUNNING)
            self._watch(recovered.task_id)
        self.health.resume([found.task_id for found in recovered_tasks if found.alive])
        if self.containers is not None and self.containers.unavailable() is None:
            self._in_background(self._collect_images(self.containers))
        for update in self.journal.pending():
            known = self.tasks.setdefault(update.task_id, LocalTask(update.task_id, update.state))
            if update.state.terminal:
                known.state = update.state

    async def run(self) -> None:
        """Stay connected to a master until cancelled; raises AgentRefused when refused.

        Masters are dialled in turn; one that does not lead names the leader, which is
        dialled next."""
        delay = 0.2
        while True:
            pending = list(self.config.masters)
            tried: set[str] = set()
            told_not_leader = False
            while pending:
                master = pending.pop(0).rstrip("/")
                if master in tried:
                    continue
                tried.add(master)
                try:
                    await self._session(master)
                    delay = 0.2
                except AgentRefused:
                    raise
                except NotLeading as answer:
                    log.info("%s", answer)
                    told_not_leader = True
                    if answer.leader:
                        pending.insert(0, answer.leader)
                except (
                    OSError,
                    ConnectionClosed,
                    InvalidStatus,
                    TimeoutError,
                    httpx.HTTPError,
                    CertificateRefused,
                ) as error:
                    log.warning("master %s: %s", master, error or type(error).__name__)
                finally:
                    self.registered.clear()
                    self._connection = None
            if told_not_leader:
                await asyncio.sleep(NOT_LEADER_RETRY * (1 + random.random() / 2))
                continue
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, self.config.reconnect_max_delay)

    async def shutdown(self) -> None:
        if self.config.kill_tasks_on_exit:
            await asyncio.gather(
                *(self.executor.kill(task_id) for task_id in self.executor.running()),
                return_exceptions=True,
            )
        for watcher in list(self._watchers):
            watcher.cancel()
        await self.health.close()
        await self.executor.close()
        if self.containers is not None:
            await self.containers.images.close()
            network = self.containers.network
            if network is not None and not network.attached() and network.unavailable() is None:
                await network.remove_bridge()  # nothing of ours is left on it
        self.journal.close()

    async def _collect_images(self, containers: ContainerRuntime) -> None:
        """Image garbage collection: unused images go when the store passes its watermark."""
        while True:
            await asyncio.sleep(self.config.image_gc_interval)
            try:
                removed = await containers.images.collect()
            except Exception:  # GC must never stop the agent; it tries again next round
                log.exception("image garbage collection failed")
                continue
            if removed:
                log.info("image garbage collection removed %s", ", ".join(removed))

    # ---- the master connection -----------------------------------------------------------

    async def _session(self, master: str) -> None:
        creds = self.credentials
        url = await asyncio.to_thread(discover_channel, master, creds.ca_path)
        async with connect(
            url,
            ssl=creds.client_context(),
            open_timeout=5,
            max_size=2**24,
            ping_interval=self.heartbeat_interval,
            ping_timeout=self._ping_timeout(),
            close_timeout=CLOSE_TIMEOUT,
        ) as connection:
            try:
                await connection.send(json.dumps(self._registration()))
                reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
            except ConnectionClosed as closed:
                self._raise_if_refused(closed, master)
                raise
            if reply.get("type") != "registered":
                raise OSError(f"unexpected reply to registration: {reply.get('type')!r}")
            self.heartbeat_interval = float(reply.get("heartbeat_interval", 5.0))
            # A master that stops answering (paused, or cut off without the connection
            # being closed) is left well before a new leader's re-registration window
            # (30 s by default) ends: a ping every heartbeat, ~3 heartbeats to answer it.
            # (websockets reads both before each ping.)
            connection.ping_interval = self.heartbeat_interval
            connection.ping_timeout = self._ping_timeout()
            self._connection = connection
            self.registered.set()
            log.info("registered with %s as %s", master, self.agent_id)
            self._sent_at.clear()
            await self._resend(older_than=0.0)
            heartbeat = asyncio.create_task(self._heartbeats(connection))
            renewal = asyncio.create_task(self._renewals(connection))
            try:
                async for raw in connection:
                    await self._on_message(json.loads(raw))
            except ConnectionClosed as closed:
                self._raise_if_refused(closed, master)
                raise
            finally:
                heartbeat.cancel()
                renewal.cancel()
            if connection.close_code is not None:
                self._raise_if_refused_code(connection.close_code, connection.close_reason, master)

    def _ping_timeout(self) -> float:
        return max(PING_TIMEOUT_MIN, 3 * self.heartbeat_interval)

    def _raise_if_refused(self, closed: ConnectionClosed, master: str) -> None:
        if closed.rcvd is not None:
            self._raise_if_refused_code(closed.rcvd.code, closed.rcvd.reason, master)

    @staticmethod
    def _raise_if_refused_code(code: int | None, reason: str | None, master: str) -> None:
        if code in (CLOSE_BAD_TOKEN, CLOSE_DUPLICATE_AGENT, CLOSE_REVOKED, CLOSE_POLICY):
            raise AgentRefused(f"master refused this agent: {reason}")
        if code == CLOSE_NOT_LEADER:
            leader = (reason or "").strip().rstrip("/")
            raise NotLeading(master, leader if leader.startswith(("http://", "https://")) else "")

    def _registration(self) -> dict[str, Any]:
        config = self.config
        return {
            "type": "register",
            "agent_id": self.agent_id,
            "hostname": config.hostname,
            "resources": config.resources.to_json(),
            "attributes": dict(config.attributes),
            "http_url": self.http_url,
            "isolation": self.executor.isolation_info(),
            "containers": self.executor.containers_info(),
            "version": tessera.__version__,
            "tasks": [
                {
                    "task_id": task.task_id,
                    "state": task.state.value,
                    **self.health.status(task.task_id),
                }
                for task in self.tasks.values()
                if not task.state.terminal or self.journal.latest_for(task.task_id) is not None
            ],
        }

    async def _renewals(self, connection: ClientConnection) -> None:
        """Ask for new certificates at 2/3 of the client certificate's life (same key)."""
        creds = self.credentials
        while True:
            await asyncio.sleep(max(0.5, creds.renew_in()))
            csr = creds.renewal_request()
            await connection.send(json.dumps({"type": "renew", "csr": csr}))
            await asyncio.sleep(min(RENEW_RETRY, max(1.0, creds.renew_in() / 2)))

    def _on_certificate(self, message: dict[str, Any]) -> None:
        creds = self.credentials
        try:
            creds.store_certificate(str(message["certificate"]))
            if message.get("serving_certificate"):
                creds.store_serving(str(message["serving_certificate"]))
                creds.reload_serving(self.serving_context)
        except (KeyError, ValueError, OSError, ssl.SSLError) as error:
            log.warning("could not keep the renewed certificate: %s", error)
            return
        log.info("certificates renewed (next renewal in %.0f s)", creds.renew_in())

    async def _heartbeats(self, connection: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await connection.send('{"type": "heartbeat"}')
            await self._resend(older_than=min(RESEND_AFTER, 2 * self.heartbeat_interval))

    async def _resend(self, older_than: float) -> None:
        now = self.clock.monotonic()
        for update in self.journal.pending():
            if now - self._sent_at.get(update.uuid, -1e9) >= older_than:
                await self._send(update)

    async def _send(self, update: StatusUpdate) -> None:
        connection = self._connection
        if connection is None:
            return  # journaled; sent when the agent is registered again
        self._sent_at[update.uuid] = self.clock.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await connection.send(json.dumps(update.to_json()))

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "launch":
            await self._launch(message["task"], LaunchSecrets.from_json(message.get("secrets")))
        elif kind == "kill":
            # A kill waits out the task's grace period: the master's other messages (more
            # kills among them) must not wait behind it.
            self._in_background(self._kill(str(message["task_id"]), message.get("grace")))
        elif kind == "ack":
            acknowledged = self.journal.acknowledge(str(message["uuid"]))
            self._sent_at.pop(str(message["uuid"]), None)
            if acknowledged is not None and acknowledged.state.terminal:
                # The master has the task's end on record: its checkpoint may go (the
                # sandbox stays for its logs).
                with contextlib.suppress(KeyError, ValueError):
                    self.executor.forget(acknowledged.task_id)
        elif kind == "certificate":
            self._on_certificate(message)
        elif kind == "renewal-refused":
            log.warning("the master refused to renew the certificate: %s", message.get("message"))
        else:
            log.warning("unknown message from master: %r", kind)

    # ---- tasks -------------------------------------------------------------------------

    async def report(
        self,
        task_id: str,
        state: TaskState,
        reason: str | None = None,
        message: str | None = None,
        exit_code: int | None = None,
        *,
        healthy: bool | None = None,
        ready: bool | None = None,
        ip_addresses: tuple[str, ...] = (),
    ) -> None:
        update = StatusUpdate(
            uuid=str(uuid.uuid4()),
            task_id=task_id,
            state=state,
            timestamp=self.clock.wall(),
            reason=reason,
            message=message,
            exit_code=exit_code,
            healthy=healthy,
            ready=ready,
            ip_addresses=ip_addresses,
        )
        local = self.tasks.setdefault(task_id, LocalTask(task_id, state))
        local.state = state
        with contextlib.suppress(NotDurable):  # logged; still pending, so sent and resent
            await self.journal.record(update)
        await self._send(update)

    async def _launch(self, payload: dict[str, Any], secrets: LaunchSecrets) -> None:
        """`secrets` stay in memory, passed down to the start: the task's checkpoint, the
        status journal and the health checker's state never see them."""
        task_id = str(payload["id"])
        if task_id in self.tasks:
            return  # a resent launch: this agent already has the task
        spec = TaskSpec.from_json(payload["spec"])
        ports = tuple(int(port) for port in payload.get("ports", ()))
        self.tasks[task_id] = LocalTask(task_id, TaskState.TASK_STAGING, ports)
        secrets = secrets.only(spec.secrets)
        missing = secrets.missing(spec.secrets)
        if missing:
            message = f"the launch lacks the values of its secrets: {', '.join(missing)}"
            await self.report(task_id, TaskState.TASK_FAILED, REASON_SECRETS, message)
            return
        if spec.fetch or spec.container:  # downloads take time: do not hold up the others
            self._in_background(self._fetch_then_start(task_id, spec, ports, secrets))
        else:
            await self._start(task_id, spec, ports, secrets=secrets)

    async def _fetch_then_start(
        self, task_id: str, spec: TaskSpec, ports: tuple[int, ...], secrets: LaunchSecrets
    ) -> None:
        user = self.executor.user_for(spec.user, spec.role)
        if spec.container is not None:
            user = "root"  # the sandbox is handed to the container's user at launch
        try:
            if spec.fetch:
                await fetch_all(fetch_of(spec.fetch), self.executor.sandbox(task_id), user=user)
            container = await self._pull(spec)
        except (FetchFailed, PullFailed, ValueError) as error:  # ValueError: a bad spec
            if self.tasks[task_id].state is TaskState.TASK_STAGING:  # else killed meanwhile
                reason = REASON_CONTAINER_LAUNCH_FAILED
                await self.report(task_id, TaskState.TASK_FAILED, reason, _failure(error))
            return
        if self.tasks[task_id].state is TaskState.TASK_STAGING:
            await self._start(task_id, spec, ports, container, secrets)

    async def _pull(self, spec: TaskSpec) -> ContainerLaunch | None:
        """The image of a container task, pulled unless cached (or forcePullImage)."""
        container = spec.container
        if container is None:
            return None
        if self.containers is None or self.containers.unavailable():
            why = self.containers.unavailable() if self.containers else "no runtime"
            raise ValueError(f"cannot run containers on this agent: {why}")
        image = await self.containers.images.ensure(
            container.image, force_pull=container.force_pull, credential=container.credential
        )
        return container_launch(container, image, (), spec.user)

    async def _start(
        self,
        task_id: str,
        spec: TaskSpec,
        ports: tuple[int, ...],
        container: ContainerLaunch | None = None,
        secrets: LaunchSecrets | None = None,
    ) -> None:
        secrets = secrets or LaunchSecrets()
        host = self.config.hostname
        env = task_environment(task_id, spec, ports, host, secrets.env)
        if secrets.files:
            try:
                # As the agent; the executor hands the sandbox's contents to the task's
                # user when it creates the task (per role, decided there).
                self._secret_files[task_id] = write_secret_files(
                    self.executor.sandbox(task_id), secrets.files, os.geteuid(), os.getegid()
                )
            except SecretFileError as error:
                await self.report(task_id, TaskState.TASK_FAILED, REASON_SECRETS, str(error))
                return
        if container is not None and spec.container is not None:
            container = replace(container, ports=port_maps(spec.container, ports))
        launch = LaunchSpec(
            task_id=task_id,
            command=spec.cmd,
            args=spec.args,
            env=env,
            cpus=spec.cpus,
            mem=spec.mem,
            disk=spec.disk,
            cpu_hard_limit=spec.cpu_hard_limit,
            user=spec.user,
            role=spec.role,
            kill_grace_seconds=spec.kill_grace_seconds,
            container=container,
        )
        local = self.tasks[task_id]
        local.state = TaskState.TASK_STARTING  # a kill from now on waits for the launch
        try:
            running = await self.executor.launch(launch)
        except LaunchFailed as error:
            remove_secret_files(self._secret_files.pop(task_id, ()))
            await self.report(task_id, TaskState.TASK_FAILED, error.reason, error.message)
            return
        if local.kill_pending:  # killed while it was starting: it never counts as running
            self._watch(task_id)
            local.state = TaskState.TASK_KILLING
            await self.executor.kill(task_id, local.kill_grace)
            return
        if not running.started:
            self._watch(task_id)  # the container never ran: its watcher reports how it failed
            return
        addresses = (running.ip,) if running.ip else ()
        await self.report(task_id, TaskState.TASK_RUNNING, ip_addresses=addresses)
        self._watch(task_id)
        names = tuple(definition.name for definition in spec.port_definitions)
        self.health.start(
            CheckedTask(
                task_id,
                spec.health_checks,
                spec.readiness_checks,
                ports,
                names,
                str(running.sandbox),
                # Persisted by the checker: without the secrets' values.
                task_environment(task_id, spec, ports, host) if secrets.env else env,
                running.user,
                self.clock.wall(),
                exec_prefix=running.exec_prefix,
            )
        )

    def _watch(self, task_id: str) -> None:
        self._in_background(self._await_exit(task_id))

    async def _await_exit(self, task_id: str) -> None:
        result: TaskExit = await self.executor.wait(task_id)
        remove_secret_files(self._secret_files.pop(task_id, ()))
        unhealthy = await self.health.stop(task_id)  # why the checks killed it, if they did
        message, reason = result.message, result.reason
        if unhealthy:
            message, reason = f"{unhealthy} ({message})", reason or REASON_HEALTH_UPDATED
        await self.report(
            task_id,
            TaskState(result.state),
            reason,
            message,
            result.exit_code,
            healthy=False if unhealthy else None,
        )

    async def _kill(self, task_id: str, grace: float | None) -> None:
        local = self.tasks.get(task_id)
        if local is None:
            # Never launched here (the launch was lost): report it killed so the master
            # can close the record.
            await self.report(task_id, TaskState.TASK_KILLED, message="task unknown to agent")
            return
        if local.state.terminal:
            latest = self.journal.latest_for(task_id)
            if latest is not None:
                await self._send(latest)
            return
        if task_id in self.executor.running():
            local.state = TaskState.TASK_KILLING
            await self.health.pause(task_id)
            await self.executor.kill(task_id, grace)
        elif local.state is TaskState.TASK_STARTING:  # the executor is starting it
            local.kill_pending, local.kill_grace = True, grace
        elif local.state is TaskState.TASK_STAGING:  # still fetching: it never starts
            await self.report(task_id, TaskState.TASK_KILLED, message="killed before it started")

    # ---- health checks (agent/health.py) --------------------------------------------------

    async def _report_health(
        self, task_id: str, healthy: bool | None, ready: bool | None, reason: str, message: str
    ) -> None:
        local = self.tasks.get(task_id)
        if local is not None and local.state is TaskState.TASK_RUNNING:
            await self.report(
                task_id, TaskState.TASK_RUNNING, reason, message, healthy=healthy, ready=ready
            )

    def _kill_unhealthy(self, task_id: str, message: str) -> None:
        self._in_background(self._kill(task_id, None))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
