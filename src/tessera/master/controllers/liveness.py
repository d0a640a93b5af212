"""Marks agents that miss their heartbeats unreachable, and their tasks TASK_UNREACHABLE."""

from __future__ import annotations

import asyncio
import logging

from tessera.clock import Clock
from tessera.master.agent_channel import AgentChannel
from tessera.master.config import MasterConfig
from tessera.master.state import ClusterState
from tessera.model.agent import AgentState
from tessera.model.task import Task
from tessera.reconcile.liveness import silent_agents
from tessera.reconcile.task_status import mark_unreachable

log = logging.getLogger(__name__)


class LivenessController:
    def __init__(
        self, state: ClusterState, channel: AgentChannel, config: MasterConfig, clock: Clock
    ) -> None:
        self.state = state
        self.channel = channel
        self.config = config
        self.clock = clock

    @property
    def timeout(self) -> float:
        return self.config.heartbeat_interval * self.config.max_missed_heartbeats

    async def run(self) -> None:
        period = max(0.05, min(1.0, self.config.heartbeat_interval / 2))
        while True:
            await asyncio.sleep(period)
            try:
                await self.check()
            except Exception:
                log.exception("liveness check failed")

    async def check(self) -> list[str]:
        active = [a for a in self.state.agents.values() if a.state.reachable]
        last_seen = {agent.id: self.channel.last_seen(agent.id) for agent in active}
        silent = silent_agents(last_seen, self.clock.monotonic(), self.timeout)
        if silent:
            await self._mark_unreachable(silent)
        return silent

    async def _mark_unreachable(self, agent_ids: list[str]) -> None:
        """One write for every agent found silent in this pass, so the services controller
        sees an outage of several agents whole (its replacement throttle counts them)."""
        now = self.clock.wall()
        silent_for = {a: self.clock.monotonic() - self.channel.last_seen(a) for a in agent_ids}
        agents = [
            # Its last heartbeat in wall time, so how long it has been away survives a
            # restart (one silent since the master started counts from the end of the
            # re-registration window).
            self.state.agents[agent_id].with_changes(
                state=AgentState.UNREACHABLE, last_seen_at=now - max(0.0, silent_for[agent_id])
            )
            for agent_id in agent_ids
        ]
        tasks: list[Task] = []
        for agent_id in agent_ids:
            for task in self.state.active_tasks_on(agent_id):
                changed = mark_unreachable(task, now)
                if changed is not None:
                    tasks.append(changed)
        await self.state.save(tasks=tasks, agents=agents)
        for agent_id in agent_ids:
            self.channel.disconnect(agent_id)
            log.warning(
                "agent %s missed %d heartbeats: marked unreachable with %d tasks",
                agent_id,
                self.config.max_missed_heartbeats,
                sum(1 for t in tasks if t.agent_id == agent_id),
            )
