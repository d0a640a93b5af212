"""The single writer of plans: places queued tasks, commits the plan, sends the launches.

Preemption: when the engine makes room for a higher-priority task by evicting running ones,
the victims are killed (TASK_KILLED with REASON_CONTAINER_PREEMPTED; their app or job puts a
replacement in the queue as for any other end) and the preemptor waits in the queue, out of
the passes, until they have stopped; the next pass then places it in the room they left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tessera.clock import Clock
from tessera.master.agent_channel import AgentChannel
from tessera.master.placement_adapter import (
    WAITING_FOR_PREEMPTION,
    Preemption,
    QuotaSource,
    build_snapshot,
    place_tasks,
    record_placed,
)
from tessera.master.state import ClusterState
from tessera.model.task import Task, TaskState
from tessera.placement import Snapshot

log = logging.getLogger(__name__)

# How long a wake-up waits for more work before placing: small against launch latency,
# long enough that a burst of API calls is placed in a few passes, not one pass each.
BATCH_WINDOW = 0.005
# Mesos's reason for a task stopped to make room for another.
REASON_PREEMPTED = "REASON_CONTAINER_PREEMPTED"


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
        # Preemptors waiting for their victims to stop: task id -> victims' ids.
        self._preempting: dict[str, frozenset[str]] = {}

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
        all_queued = self.state.queued_tasks()
        if self._preempting:  # preemptors killed or gone meanwhile wait no more
            ids = {task.id for task in all_queued}
            self._preempting = {k: v for k, v in self._preempting.items() if k in ids}
        queued = [t for t in all_queued if not self._waiting(t)]
        if not queued:
            return 0
        # Placement is synchronous, so nothing changes between reading the state and
        # applying the plan: the plan can never be built on stale state in this process.
        snapshot = self._current_snapshot()
        result = place_tasks(snapshot, queued, self.quotas)
        now = self.clock.wall()
        changed: list[Task] = []
        placed: list[Task] = []
        killing, waiting = self._preempt(result.preemptions, now)
        changed.extend(killing)
        changed.extend(waiting)
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
        record_placed(snapshot, placed)
        await self.state.save(tasks=changed)
        for task in killing:
            self.channel.send_kill(task)
        for task in placed:
            self.channel.send_launch(task)
        return len(placed)

    def _waiting(self, task: Task) -> bool:
        """The task waits for victims that have not stopped yet (then it is left out)."""
        victims = self._preempting.get(task.id)
        if victims is None:
            return False
        if any((v := self.state.tasks.get(victim)) and not v.state.terminal for victim in victims):
            return True
        del self._preempting[task.id]
        return False

    def _preempt(self, preemptions: list[Preemption], now: float) -> tuple[list[Task], list[Task]]:
        """The victims of this pass's preemptions, being killed, and their preemptors, waiting
        in the queue for them."""
        killing: list[Task] = []
        waiting: list[Task] = []
        for preemption in preemptions:
            preemptor = self.state.tasks[preemption.task_id]
            self._preempting[preemptor.id] = frozenset(preemption.victims)
            reasons = {WAITING_FOR_PREEMPTION: len(preemption.victims)}
            waiting.append(preemptor.with_changes(queued_reasons=reasons, updated_at=now))
            for victim_id in preemption.victims:
                victim = self.state.tasks.get(victim_id)
                if victim is None or not victim.state.active:
                    continue
                killing.append(
                    victim.with_changes(
                        state=TaskState.TASK_KILLING,
                        reason=REASON_PREEMPTED,
                        message=(
                            f"preempted for {preemptor.spec.app_id or preemptor.id} "
                            f"(priority {preemptor.spec.priority} > {victim.spec.priority})"
                        ),
                        updated_at=now,
                    )
                )
            log.info(
                "preempting %s on %s for %s",
                ", ".join(preemption.victims),
                preemption.agent_id,
                preemptor.id,
            )
        if preemptions:
            # The snapshot holds the plan's evictions and the waiting preemptors: rebuild.
            self._snapshot = None
        return killing, waiting

    def _current_snapshot(self) -> Snapshot:
        if self._snapshot is None or self._snapshot_generation != self.state.generation:
            agents = list(self.state.agents.values())
            running = {agent.id: self.state.active_tasks_on(agent.id) for agent in agents}
            self._snapshot = build_snapshot(agents, running)
            self._snapshot_generation = self.state.generation
        return self._snapshot
