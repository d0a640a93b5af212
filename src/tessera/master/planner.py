"""The single writer of plans: places queued tasks, commits the plan, sends the launches."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tessera.master.agent_channel import AgentChannel
from tessera.master.placement_adapter import place_tasks
from tessera.master.state import ClusterState
from tessera.model.clock import Clock
from tessera.model.task import Task, TaskState

log = logging.getLogger(__name__)


class Planner:
    def __init__(
        self, state: ClusterState, channel: AgentChannel, clock: Clock, retry_interval: float
    ) -> None:
        self.state = state
        self.channel = channel
        self.clock = clock
        self.retry_interval = retry_interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something changed that may let queued tasks fit; the next pass runs at once."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_interval)
            self._wake.clear()
            try:
                await self.place_queued()
            except Exception:
                log.exception("placement pass failed; retrying on the next wake-up")

    async def place_queued(self) -> int:
        """One pass; returns how many tasks it placed."""
        queued = self.state.queued_tasks()
        if not queued:
            return 0
        agents = list(self.state.agents.values())
        running = {agent.id: self.state.active_tasks_on(agent.id) for agent in agents}
        # Placement is synchronous, so nothing changes between reading the state and
        # applying the plan: the plan can never be built on stale state in this process.
        result = place_tasks(agents, running, queued)
        now = self.clock.wall()
        changed: list[Task] = []
        placed: list[Task] = []
        for assignment in result.assignments:
            task = self.state.tasks[assignment.task_id]
            agent = self.state.agents[assignment.agent_id]
            staged = task.with_changes(
                state=TaskState.TASK_STAGING,
                agent_id=agent.id,
                hostname=agent.hostname,
                ports=assignment.ports,
                queued_reasons={},
                updated_at=now,
            )
            changed.append(staged)
            placed.append(staged)
        for task_id, reasons in result.unplaced.items():
            task = self.state.tasks[task_id]
            if dict(task.queued_reasons) != reasons:
                changed.append(task.with_changes(queued_reasons=reasons, updated_at=now))
        await self.state.save(tasks=changed)
        for task in placed:
            self.channel.send_launch(task)
        return len(placed)
