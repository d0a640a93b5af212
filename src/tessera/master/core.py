"""Wires the master's parts together: state, agent channel, planner and controllers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from tessera.clock import Clock, SystemClock
from tessera.master.agent_channel import AgentChannel
from tessera.master.config import MasterConfig
from tessera.master.controllers.liveness import LivenessController
from tessera.master.join_token import ensure_join_token
from tessera.master.planner import Planner
from tessera.master.state import ClusterState
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.store import StateStore, open_store

log = logging.getLogger(__name__)


class Component(Protocol):
    """A controller or other long-running part of the master (services, jobs, ...)."""

    async def start(self) -> None:
        """Load its own state from the store and start its loops; called after the
        cluster state is loaded."""

    async def stop(self) -> None: ...


class Master:
    def __init__(
        self, config: MasterConfig, store: StateStore | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.store = store or open_store(config.store, config.work_dir)
        self.join_token = ensure_join_token(config.join_token_path)
        self.state = ClusterState(self.store)
        self.channel = AgentChannel(
            self.state, config, self.clock, self.join_token, on_change=self._wake_planner
        )
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
        await self.state.load()
        self.channel.started_at = self.clock.monotonic()
        self._loops = [
            asyncio.create_task(self.planner.run(), name="planner"),
            asyncio.create_task(self.liveness.run(), name="liveness"),
        ]
        for component in self.components:
            await component.start()
        if self.state.queued_tasks():
            self.planner.wake()
        log.info(
            "master started: %d agents, %d tasks known",
            len(self.state.agents),
            len(self.state.tasks),
        )

    async def stop(self) -> None:
        for component in reversed(self.components):
            await component.stop()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self.store.close()

    # ---- commands from the API -------------------------------------------------------

    async def submit(self, task_id: str, spec: TaskSpec) -> Task:
        now = self.clock.wall()
        task = Task(
            id=task_id, spec=spec, state=TaskState.TASK_QUEUED, created_at=now, updated_at=now
        )
        await self.state.save(tasks=[task])
        self.planner.wake()
        return task

    async def kill(self, task_id: str) -> Task:
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
