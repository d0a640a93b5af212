"""Wires the master's parts together: state, agent channel, planner and controllers.

With SQLite the master always leads. With etcd it leads only while it holds the leader
lease (master/ha.py): its parts run during a term and are stopped when the term ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tessera.clock import Clock, SystemClock
from tessera.master.agent_channel import AgentChannel
from tessera.master.audit import AuditLog
from tessera.master.auth import Authority
from tessera.master.config import MasterConfig
from tessera.master.controllers.liveness import LivenessController
from tessera.master.planner import Planner
from tessera.master.state import ClusterState
from tessera.model.permissions import Rid, service_rid
from tessera.model.protocol import CLOSE_NOT_LEADER
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.store import StateStore, open_store

if TYPE_CHECKING:
    from tessera.store.etcd import EtcdStore
    from tessera.store.etcd_commit import LeaderFence
    from tessera.store.leadership import Leadership

log = logging.getLogger(__name__)

# How long stepping down waits for a component to stop before going on without it.
STOP_TIMEOUT = 5.0


class Component(Protocol):
    """A controller or other long-running part of the master (services, jobs, ...)."""

    async def start(self) -> None:
        """Load its own state from the store and start its loops; called after the
        cluster state is loaded."""

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaderView:
    """Who leads, for /v1/leader and /v2/leader."""

    id: str
    url: str
    address: str  # host:port
    is_self: bool
    term: int = 0  # with etcd: grows with every new term (0 for a lone master)


def _etcd_store(store: StateStore) -> EtcdStore | None:
    # The etcd client (grpc) is imported only when an etcd store was opened.
    if "tessera.store.etcd" not in sys.modules:
        return None
    from tessera.store.etcd import EtcdStore

    return store if isinstance(store, EtcdStore) else None


class Master:
    def __init__(
        self, config: MasterConfig, store: StateStore | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        # Where other masters and agents reach this one (resolved once: it may ask DNS).
        self.url = config.url
        self.clock = clock or SystemClock()
        backing = store or open_store(config.store, config.work_dir)
        self.store: StateStore = backing
        # Under etcd: the election, and the store that fences every write by the term.
        self.leadership: Leadership | None = None
        etcd = _etcd_store(backing)
        if etcd is not None:
            from tessera.master.ha import TermStore, leadership_for

            self.store = TermStore(etcd, self._step_down)
            self.leadership = leadership_for(etcd, config, self.url, self._elected, self._step_down)
        # True while this master serves as the leader (its state loaded, its parts running).
        self.leading = False
        # Why the term ended; once set, this master never leads again in this process.
        self.lost_reason: str | None = None
        # Called once a term has ended and everything is stopped (`tessera master` exits).
        self.on_term_end: Callable[[str], None] | None = None
        self._campaign: asyncio.Task[None] | None = None
        self._taking_over: asyncio.Task[None] | None = None
        self._stepping_down: asyncio.Task[None] | None = None
        self._stopping = False
        self._abdicating: asyncio.Task[None] | None = None
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authority(config, self.store, self.clock)
        self.audit = AuditLog(self.store, config.work_dir / "audit.log", self.clock)
        self.auth.follower = lambda: self.leadership is not None and not self.leading
        self.auth.task_owners.append(self._task_owner)
        # etcd refuses transactions above its --max-txn-ops (one is the revision counter's).
        self.state = ClusterState(self.store, etcd.max_txn_ops - 1 if etcd else None)
        self.channel = AgentChannel(self.state, config, self.clock, on_change=self._wake_planner)
        self.planner = Planner(
            self.state, self.channel, self.clock, config.placement_retry_interval
        )
        self.liveness = LivenessController(self.state, self.channel, config, self.clock)
        self._loops: list[asyncio.Task[None]] = []
        self.components: list[Component] = []

    def add_component(self, component: Component) -> None:
        """Register a controller; it starts with the master and stops before the store."""
        self.components.append(component)

    def _wake_planner(self) -> None:
        self.planner.wake()

    async def start(self) -> None:
        if self.leadership is None:
            await self._lead()
            return
        self._campaign = asyncio.create_task(self.leadership.run(), name="leadership")
        log.info("master %s campaigns for the leadership", self.url)

    async def _lead(self) -> None:
        """Load the cluster from the store and start every part, as a restart does."""
        await self.auth.lead()
        await self.state.load()
        self.channel.started_at = self.clock.monotonic()
        self._loops = [
            asyncio.create_task(self.planner.run(), name="planner"),
            asyncio.create_task(self.liveness.run(), name="liveness"),
            asyncio.create_task(self.auth.keep_admin_token_fresh(), name="admin token"),
        ]
        for component in self.components:
            await component.start()
        if self.state.queued_tasks():
            self.planner.wake()
        self.leading = self.lost_reason is None  # a term may end while it starts
        log.info(
            "master started: %d agents, %d tasks known",
            len(self.state.agents),
            len(self.state.tasks),
        )

    async def _stop_parts(self) -> None:
        self.leading = False
        for component in reversed(self.components):
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def stop(self) -> None:
        self._stopping = True
        if self._taking_over is not None:
            self._taking_over.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._taking_over
        await self._stop_parts()
        if self._campaign is not None:
            # Cancelling the campaign resigns: a leader's lease is revoked, so another
            # master takes over at once instead of after the lease.
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        await self.store.close()

    # ---- leadership (etcd only) ------------------------------------------------------

    def _elected(self, fence: LeaderFence) -> None:
        if self.lost_reason is not None:
            return  # a master leads at most once per process; its campaign is ending
        from tessera.master.ha import TermStore

        assert isinstance(self.store, TermStore)
        self.store.begin(fence)
        self._taking_over = asyncio.get_running_loop().create_task(
            self._take_over(), name="take over"
        )

    async def _take_over(self) -> None:
        try:
            await self._lead()
        except Exception as error:
            log.exception("taking over as leader failed")
            self._step_down(f"taking over failed: {error}")

    def _step_down(self, reason: str) -> None:
        """The term is over (lease lost, or etcd refused a write): stop acting at once."""
        from tessera.master.ha import TermStore

        if isinstance(self.store, TermStore):
            self.store.end()  # this process's later writes fail before reaching etcd
        if self.lost_reason is not None or self._stopping:
            return  # already stepping down, or shutting down (which resigns)
        self.lost_reason = reason
        self.leading = False
        log.error("leadership lost (%s): stepping down", reason)
        self.channel.close_all(CLOSE_NOT_LEADER, "leadership lost")
        self._stepping_down = asyncio.get_running_loop().create_task(
            self._stop_term(reason), name="step down"
        )

    async def _stop_term(self, reason: str) -> None:
        if self._taking_over is not None and self._taking_over is not asyncio.current_task():
            self._taking_over.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._taking_over
        await self._stop_parts()
        if self._campaign is not None and self._campaign is not asyncio.current_task():
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        if self.on_term_end is not None:
            self.on_term_end(reason)

    def abdicate(self) -> None:
        """Give the leadership up (DELETE /v2/leader): the lease is revoked, another master
        takes over at once, and this one steps down as if it had lost."""
        if self.leadership is not None:
            leadership = self.leadership
            self._abdicating = asyncio.get_running_loop().create_task(
                leadership.resign(), name="abdicate"
            )

    def leader_url(self) -> str | None:
        """For the leader proxy: None while this master serves requests itself, the
        leader's URL while another master leads, "" while none does (or this one is still
        taking over, or stepping down)."""
        if self.leading or self.leadership is None:
            return None
        leader = self.leadership.leader
        if leader is None or leader.id == self.leadership.id:
            return ""
        return leader.url

    def leader(self) -> LeaderView | None:
        """Who leads now, as this master knows it; None while no one does. A master
        without etcd always leads."""
        if self.leadership is None:
            return LeaderView("self", self.url, self.url.split("//")[-1], True)
        from tessera.master.ha import leader_address

        found = self.leadership.leader
        if found is None:
            return None
        is_self = found.id == self.leadership.id and self.leading
        if found.id == self.leadership.id and not self.leading:
            return None  # elected but not serving yet, or already stepping down
        return LeaderView(found.id, found.url, leader_address(found), is_self, found.term)

    def _task_owner(self, task_id: str) -> Rid | None:
        """What a task's permissions hang on: its app, or the group of a one-off task.
        (Jobs' tasks: the Metronome API adds its own owner.)"""
        task = self.state.tasks.get(task_id)
        if task is None:
            return None
        if task.spec.app_id is not None:
            return service_rid(task.spec.app_id)
        if task.spec.group is not None:
            return service_rid(task.spec.group)
        return None

    # ---- commands from the API -------------------------------------------------------

    async def submit(
        self,
        task_id: str,
        spec: TaskSpec,
        moved_from: str | None = None,
        target_agent: str | None = None,
    ) -> Task:
        """Queue a task; a replacement for a moved one names it and the agent chosen."""
        now = self.clock.wall()
        task = Task(
            id=task_id,
            spec=spec,
            state=TaskState.TASK_QUEUED,
            created_at=now,
            updated_at=now,
            moved_from=moved_from,
            target_agent=target_agent,
        )
        await self.state.save(tasks=[task])
        self.planner.wake()
        return task

    async def kill(
        self, task_id: str, reason: str | None = None, message: str | None = None
    ) -> Task:
        """Kill a task; `reason` (e.g. REASON_AGENT_DRAINING) and `message` are kept as
        how it ended."""
        task = self.state.tasks[task_id]
        now = self.clock.wall()
        if task.state.terminal:
            return task
        if task.state is TaskState.TASK_QUEUED:
            killed = task.with_changes(
                state=TaskState.TASK_KILLED,
                message="killed before it was placed",
                updated_at=now,
                finished_at=now,
            )
            await self.state.save(tasks=[killed])
            return killed
        killing = task.with_changes(state=TaskState.TASK_KILLING, updated_at=now)
        if reason is not None:
            killing = killing.with_changes(reason=reason, message=message)
        await self.state.save(tasks=[killing])
        # An agent that is not connected gets the kill again when it re-registers.
        self.channel.send_kill(killing)
        return killing

    def allocated(self, agent_id: str) -> dict[str, float]:
        totals = {"cpus": 0.0, "mem": 0.0, "disk": 0.0, "gpus": 0.0}
        for task in self.state.active_tasks_on(agent_id):
            totals["cpus"] += task.spec.cpus
            totals["mem"] += task.spec.mem
            totals["disk"] += task.spec.disk
            totals["gpus"] += task.spec.gpus
        return totals
