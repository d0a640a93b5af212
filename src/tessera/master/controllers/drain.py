"""Drain and maintenance: an agent taken out of service empties without losing capacity.

`drain` marks the agent (durably) so that it takes no new work. Its service instances move
elsewhere through the services controller, each app within its upgradeStrategy (see
`reconcile.services`); its other tasks (job runs, one-off tasks) may finish until the
deadline, then are killed with REASON_AGENT_DRAINING. Once nothing runs there the agent is
DRAINED; `reactivate` makes it ACTIVE again. An instance with nowhere to go stays, and
`blocked` says why. The drain is kept across agent and master restarts (it lives in the
agent's record), and the check runs every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from tessera.master.controllers.services import REASON_DRAINED, ServicesController
from tessera.master.core import Master
from tessera.model.agent import Agent, AgentState, Drain
from tessera.model.task import Task, TaskState
from tessera.reconcile.services import capacity_bounds, is_ready

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0


class DrainRefused(Exception):
    """The agent cannot be drained or reactivated now (409)."""


@dataclass(frozen=True, slots=True)
class Blocked:
    """A task still on a draining agent and why it has not gone yet."""

    task_id: str
    app_id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"taskId": self.task_id, "appId": self.app_id, "reason": self.reason}


def _refuse_if_rebalancing(agent: Agent) -> None:
    if agent.drain is not None and agent.drain.rebalance is not None:
        raise DrainRefused(
            f"agent {agent.id} is being emptied by rebalance {agent.drain.rebalance}; "
            "cancel it first"
        )


class DrainController:
    def __init__(self, master: Master, services: ServicesController) -> None:
        self.master = master
        self.services = services
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="drain")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await self.check()
            except Exception:
                log.exception("drain check failed; retrying")

    # ---- commands ------------------------------------------------------------------------

    async def drain(
        self, agent_id: str, deadline_seconds: float | None, user: str | None = None
    ) -> Agent:
        """Take the agent out of service (again: a new deadline). KeyError: unknown."""
        agent = self.master.state.agents[agent_id]
        if agent.state is AgentState.GONE:
            raise DrainRefused(f"agent {agent_id} is gone")
        _refuse_if_rebalancing(agent)
        now = self.master.clock.wall()
        deadline = None if deadline_seconds is None else now + deadline_seconds
        started = agent.drain.started_at if agent.drain is not None else now
        return await self.mark(agent, Drain(started, deadline, None, user), user)

    async def mark(self, agent: Agent, drain: Drain, user: str | None = None) -> Agent:
        """Record the agent's drain (an operator's or a rebalance's) and start it."""
        state = self._drain_state(agent.id) if agent.state.reachable else agent.state
        changed = agent.with_changes(drain=drain, state=state)
        await self.master.state.save(agents=[changed])
        if agent.drain is None:
            self._event("agent_draining_event", changed, user)
            log.info("agent %s drains (deadline %s)", agent.id, drain.deadline)
        self.services.wake()
        return changed

    async def reactivate(
        self, agent_id: str, user: str | None = None, owner: str | None = None
    ) -> Agent:
        """Back in service (`owner`: the rebalance that emptied it). KeyError: unknown."""
        agent = self.master.state.agents[agent_id]
        if agent.drain is None:
            return agent
        if agent.drain.rebalance != owner:
            _refuse_if_rebalancing(agent)
        state = AgentState.ACTIVE if agent.state.reachable else agent.state
        changed = agent.with_changes(drain=None, state=state)
        await self.master.state.save(agents=[changed])
        self._event("agent_reactivated_event", changed, user)
        log.info("agent %s reactivated", agent.id)
        self.services.wake()
        self.master.planner.wake()
        return changed

    def _event(self, kind: str, agent: Agent, user: str | None) -> None:
        fields: dict[str, Any] = {"agentId": agent.id, "hostname": agent.hostname}
        if user is not None:
            fields["user"] = user
        self.services.events.publish(kind, self.master.clock.wall(), **fields)

    # ---- the check -----------------------------------------------------------------------

    def _drain_state(self, agent_id: str) -> AgentState:
        """DRAINED once nothing runs on the agent, DRAINING until then."""
        if self.master.state.active_tasks_on(agent_id):
            return AgentState.DRAINING
        return AgentState.DRAINED

    async def check(self) -> None:
        now = self.master.clock.wall()
        changed: list[Agent] = []
        for agent in list(self.master.state.agents.values()):
            drain = agent.drain
            if drain is None or not agent.state.reachable:
                continue
            if drain.rebalance is None and drain.deadline is not None and now >= drain.deadline:
                for task in self.master.state.active_tasks_on(agent.id):
                    if task.state is TaskState.TASK_KILLING or self._service_task(task):
                        continue
                    await self.master.kill(
                        task.id,
                        REASON_DRAINED,
                        "killed at the deadline of its agent's drain",
                    )
            state = self._drain_state(agent.id)
            if state is not agent.state:
                changed.append(agent.with_changes(state=state))
        if changed:
            await self.master.state.save(agents=changed)
            for agent in changed:
                if agent.state is AgentState.DRAINED:
                    self._event("agent_drained_event", agent, None)
                    log.info("agent %s drained: nothing runs there any more", agent.id)

    def _service_task(self, task: Task) -> bool:
        app_id = task.spec.app_id
        return bool(app_id and app_id.startswith("/") and self.services.state.knows(app_id))

    # ---- why it is not empty yet ---------------------------------------------------------

    def blocked(self, agent: Agent) -> list[Blocked]:
        """Every task still on the draining agent, with why it has not gone yet."""
        if agent.drain is None:
            return []
        return [
            Blocked(task.id, task.spec.app_id, self._why(task, agent.drain))
            for task in self.master.state.active_tasks_on(agent.id)
        ]

    def _why(self, task: Task, drain: Drain) -> str:
        if task.state is TaskState.TASK_KILLING:
            return "stopping"
        if not self._service_task(task):
            if drain.rebalance is not None:
                return "not an instance of a service: a rebalance does not move it"
            if drain.deadline is None:
                return "a job run or one-off task: it may run until it ends (no deadline)"
            return "a job run or one-off task: it may run until the deadline, then it is killed"
        app_id = task.spec.app_id or ""
        state = self.services.state
        deployment = state.deployment_of(app_id)
        if deployment is not None:
            return f"deployment {deployment.id} of {app_id} is in progress; it moves after it"
        app = state.apps.get(app_id)
        if app is None:
            return "its app is being removed"
        minimum, most = capacity_bounds(app)
        if minimum >= app.instances and most <= app.instances:
            strategy = app.upgrade_strategy
            return (
                f"the upgradeStrategy of {app_id} (minimumHealthCapacity "
                f"{strategy.minimum_health_capacity:g}, maximumOverCapacity "
                f"{strategy.maximum_over_capacity:g}) allows neither a replacement before it "
                "stops nor a gap while it moves"
            )
        replacement = next(
            (t for t in state.tasks_of(app_id) if t.moved_from == task.id),
            None,
        )
        if replacement is None:
            ready = sum(1 for t in state.tasks_of(app_id) if is_ready(t, app))
            if ready < minimum:
                return (
                    f"{app_id} has {ready} ready instances, its minimum is {minimum}: it "
                    "moves once the others are ready"
                )
            return f"waiting for room within the upgradeStrategy of {app_id}"
        if replacement.state is TaskState.TASK_QUEUED:
            reasons = ", ".join(
                f"{name} ({count} agents)" for name, count in replacement.queued_reasons.items()
            )
            if not reasons:
                return f"its replacement {replacement.id} waits to be placed"
            return f"its replacement {replacement.id} has no agent to go to: {reasons}"
        return f"its replacement {replacement.id} is starting (not ready yet)"
