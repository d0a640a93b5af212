"""The single writer of plans: places queued tasks, commits the plan, sends the launches."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tessera.clock import Clock
from tessera.master.agent_channel import AgentChannel
from tessera.master.placement_adapter import QuotaSource, build_snapshot, place_tasks
from tessera.master.state import ClusterState
from tessera.model.task import Task, TaskState
from tessera.placement import Snapshot

log = logging.getLogger(__name__)

# How long a wake-up waits for more work before placing: small against launch latency,
# long enough that a burst of API calls is placed in a few passes, not one pass each.
BATCH_WINDOW = 0.005


class Planner:
    def __init__(
        self, state: ClusterState, channel: AgentChannel, clock: Clock, retry_interval: float
    ) -> None:
        self.state = state
        # Set by the quotas API (master/api/quotas_v1.py): role limits the engine enforces.
        self.quotas: QuotaSource | None = None
        self.channel = channel
        self.clock = clock
        self.retry_interval = retry_interval
        self._wake = asyncio.Event()
        # The snapshot of the last pass, reused while nothing but our own placements changed
        # the cluster (see ClusterState.generation): rebuilding it costs O(running tasks).
        self._snapshot: Snapshot | None = None
        self._snapshot_generation = -1

    def wake(self) -> None:
        """Something changed that may let queued tasks fit; the next pass runs at once."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event fires, and the master's stop hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_interval):
                    await self._wake.wait()
            # Let a burst of submissions gather, so that one pass places them all.
            await asyncio.sleep(BATCH_WINDOW)
            self._wake.clear()
            try:
                await self.place_queued()
            except Exception:
                self._snapshot = None
                log.exception("placement pass failed; retrying on the next wake-up")

    async def place_queued(self) -> int:
        """One pass; returns how many tasks it placed."""
        queued = self.state.queued_tasks()
        if not queued:
            return 0
        # Placement is synchronous, so nothing changes between reading the state and
        # applying the plan: the plan can never be built on stale state in this process.
        result = place_tasks(self._current_snapshot(), queued, self.quotas)
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

    def _current_snapshot(self) -> Snapshot:
        if self._snapshot is None or self._snapshot_generation != self.state.generation:
            agents = list(self.state.agents.values())
            running = {agent.id: self.state.active_tasks_on(agent.id) for agent in agents}
            self._snapshot = build_snapshot(agents, running)
            self._snapshot_generation = self.state.generation
        return self._snapshot
