"""The services controller: keeps every app at its instances, drives deployments, and turns
task changes into Marathon events.

Level-based: a task change marks its app dirty and wakes the loop; every pass re-reads the
apps, the deployments and the live tasks and applies what `reconcile.services` decides
(launches through `Master.submit`, kills through `Master.kill`, both idempotent by task).
A full resync runs every second, which is also what fires the timers (backoff delays,
unreachable timeouts, progress deadlines). After a master restart everything is rebuilt
from the store, so a deployment that was running goes on where it was.

Tasks on unreachable agents are replaced per each app's unreachableStrategy, unless more
than `unreachable_throttle_fraction` of the agents are out of contact at once: then none is
given up until enough agents are back, and an `unreachable_throttle_event` says when
replacement stops and when it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from tessera.master.controllers.deployments import DeploymentManager
from tessera.master.controllers.service_state import ServiceState
from tessera.master.core import Master
from tessera.master.events import EventBus
from tessera.model.agent import AgentState
from tessera.model.app import AppSpec, task_spec_for
from tessera.model.task import Task, TaskState, ip_addresses, new_task_id
from tessera.reconcile.deployments import effective_app
from tessera.reconcile.liveness import (
    THROTTLE_MEMORY_SECONDS,
    Outage,
    outage,
    recently_lost,
    replacement_throttled,
)
from tessera.reconcile.services import (
    Backoff,
    Mode,
    is_failure,
    launch_allowed_at,
    reconcile_app,
    record_failure,
)

log = logging.getLogger(__name__)

RESYNC_SECONDS = 1.0
BATCH_WINDOW = 0.01
# A reachable agent silent for this many heartbeat intervals counts as out of contact for
# the replacement throttle (it missed a heartbeat; see `reconcile.liveness.outage`).
OVERDUE_HEARTBEATS = 1.5
THROTTLE_EVENT = "unreachable_throttle_event"
# End reasons of tasks stopped because their agent drains (moved instances, and job runs
# and one-off tasks at the drain's deadline) or a rebalance moved them.
REASON_DRAINED = "REASON_AGENT_DRAINING"
REASON_REBALANCED = "REASON_REBALANCED"

CONDITIONS = {
    TaskState.TASK_QUEUED: "Scheduled",
    TaskState.TASK_STAGING: "Staging",
    TaskState.TASK_STARTING: "Starting",
    TaskState.TASK_RUNNING: "Running",
    TaskState.TASK_KILLING: "Killing",
    TaskState.TASK_FINISHED: "Finished",
    TaskState.TASK_FAILED: "Failed",
    TaskState.TASK_KILLED: "Killed",
    TaskState.TASK_ERROR: "Error",
    TaskState.TASK_LOST: "Gone",
    TaskState.TASK_UNREACHABLE: "Unreachable",
    TaskState.TASK_GONE: "Gone",
}


MOVABLE_STATES = frozenset(
    {TaskState.TASK_STAGING, TaskState.TASK_STARTING, TaskState.TASK_RUNNING}
)


@dataclass(frozen=True, slots=True)
class Waiting:
    """Instances an app wants but does not launch yet, and why (for `/v2/queue`)."""

    count: int
    since: float
    allowed_at: float | None = None


class ServicesController:
    def __init__(self, master: Master, events: EventBus) -> None:
        self.master = master
        self.events = events
        self.state = ServiceState(master.store)
        self.deployments = DeploymentManager(self.state, events, master.clock, self.wake)
        # API writes and reconcile passes take turns, so a pass never sees half a change.
        self.lock = asyncio.Lock()
        self.backoffs: dict[str, Backoff] = {}
        self.waiting: dict[str, Waiting] = {}
        self._dirty: set[str] = set()
        self._resync = True
        self._wake = asyncio.Event()
        self._next_check: float | None = None
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._subscribed = False
        # Whether replacing tasks on unreachable agents is held back (too many agents out).
        self.throttled = False
        # Instances a rebalance wave moves now: task id -> the agent chosen for it (set by
        # the rebalance controller; instances on drained agents move without being named).
        self.rebalance_moves: dict[str, str | None] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.state.load()
        self.backoffs.clear()
        self.waiting.clear()
        for task in self.master.state.tasks.values():
            self.state.index_task(task)
        if not self._subscribed:
            self.master.state.subscribe(self._on_task)
            self._subscribed = True
        self._stopping = False
        self._resync = True
        self._loop = asyncio.create_task(self._run(), name="services")
        log.info(
            "services: %d apps, %d deployments in progress",
            len(self.state.apps),
            len(self.state.deployments),
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    def wake(self, app_id: str | None = None) -> None:
        if app_id is None:
            self._resync = True
        else:
            self._dirty.add(app_id)
        self._wake.set()

    def reset_delay(self, app_id: str) -> None:
        self.backoffs.pop(app_id, None)
        self.wake(app_id)

    # ---- task events -------------------------------------------------------------------------

    def _on_task(self, previous: Task | None, task: Task) -> None:
        app_id = task.spec.app_id
        if not app_id or not app_id.startswith("/"):
            return
        self.state.index_task(task)
        if not self.state.knows(app_id):
            return
        now = self.master.clock.wall()
        if previous is None or previous.state is not task.state:
            self._publish_status(task, now)
        if previous is not None and task.healthy is not None and previous.healthy != task.healthy:
            self.events.publish(
                "health_status_changed_event",
                now,
                appId=app_id,
                instanceId=task.id,
                taskId=task.id,
                version=task.spec.app_version,
                alive=task.healthy,
            )
        if task.state.terminal and (previous is None or not previous.state.terminal):
            # The master's kills pass through KILLING (or end a task still queued).
            was_killing = previous is not None and previous.state in (
                TaskState.TASK_KILLING,
                TaskState.TASK_QUEUED,
            )
            self._on_ended(app_id, task, was_killing, now)
        self.wake(app_id)

    def _publish_status(self, task: Task, now: float) -> None:
        if task.state is not TaskState.TASK_QUEUED:
            self.events.publish(
                "status_update_event",
                now,
                slaveId=task.agent_id,
                taskId=task.id,
                taskStatus=task.state.value,
                message=task.message or "",
                appId=task.spec.app_id,
                host=task.hostname,
                ports=list(task.ports),
                ipAddresses=ip_addresses(task),
                version=task.spec.app_version,
            )
        self.events.publish(
            "instance_changed_event",
            now,
            instanceId=task.id,
            slaveId=task.agent_id,
            condition=CONDITIONS[task.state],
            runSpecId=task.spec.app_id,
            agentId=task.agent_id,
            host=task.hostname,
            runSpecVersion=task.spec.app_version,
            goal="Stopped" if task.state is TaskState.TASK_KILLING else "Running",
        )

    def _on_ended(self, app_id: str, task: Task, was_killing: bool, now: float) -> None:
        if not is_failure(task, was_killing):
            return
        self.state.last_failure[app_id] = task
        app = self.state.apps.get(app_id)
        if app is not None:
            self.backoffs[app_id] = record_failure(self.backoffs.get(app_id, Backoff()), app, now)
        if task.state is TaskState.TASK_KILLED:
            self.events.publish(
                "unhealthy_task_kill_event",
                now,
                appId=app_id,
                taskId=task.id,
                instanceId=task.id,
                version=task.spec.app_version,
                reason=task.message or task.reason,
                host=task.hostname,
                slaveId=task.agent_id,
            )

    # ---- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            timeout = RESYNC_SECONDS
            if self._next_check is not None:
                timeout = min(timeout, max(0.01, self._next_check - self.master.clock.wall()))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends, and the loop would never end.
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self._resync = True
            await asyncio.sleep(BATCH_WINDOW)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("services reconcile pass failed; retrying on the next wake-up")
                self._resync = True

    async def reconcile(self) -> None:
        """One pass over the dirty apps (all of them on a resync)."""
        async with self.lock:
            if self._resync:
                keys = set(self.state.apps) | set(self.state.live_tasks)
                for deployment in self.state.deployments.values():
                    keys.update(deployment.original, deployment.target)
                self._next_check = None
            else:
                keys = set(self._dirty)
            self._dirty.clear()
            self._resync = False
            await self.deployments.advance()
            now = self.master.clock.wall()
            self._update_throttle(now)
            work: list[Awaitable[Any]] = []
            for app_id in sorted(keys):
                if not self.state.knows(app_id):
                    continue
                try:
                    work.extend(self._reconcile_app(app_id, now))
                except Exception:
                    log.exception("app %s: cannot reconcile it now", app_id)
            if work:
                for outcome in await asyncio.gather(*work, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        log.error("services: a launch or kill failed: %r", outcome)
                        self._resync = True

    def _reconcile_app(self, app_id: str, now: float) -> list[Awaitable[Any]]:
        deployment = self.state.deployment_of(app_id)
        app, mode = effective_app(app_id, deployment, self.state.apps.get(app_id))
        tasks = self.state.tasks_of(app_id)
        if app is None and not tasks:
            self.waiting.pop(app_id, None)
            if app_id not in self.state.apps:
                # A deleted app leaves nothing behind (a new app of that id starts afresh).
                self.backoffs.pop(app_id, None)
                self.state.last_failure.pop(app_id, None)
            return []
        backoff = self.backoffs.get(app_id, Backoff())
        moving = self.moving(tasks)
        actions = reconcile_app(app, mode, tasks, backoff, now, self.throttled, moving)
        if actions.recheck_at is not None and (
            self._next_check is None or actions.recheck_at < self._next_check
        ):
            self._next_check = actions.recheck_at
        work: list[Awaitable[Any]] = [
            self.master.kill(task_id, *self._move_reason(task_id, moving))
            for task_id in actions.kill
        ]
        if actions.inactive:
            work.append(self._mark_inactive(actions.inactive, now))
        launch = actions.launch
        if app is not None and actions.delayed:
            missing = app.instances - len(tasks) if mode is not Mode.STOP else 0
            self._wait(app_id, max(1, missing), now, allowed_at=launch_allowed_at(backoff, app))
        else:
            self.waiting.pop(app_id, None)
        if app is not None and launch:
            work.extend(self._launch(app, launch, actions.replacing))
        return work

    def _move_reason(
        self, task_id: str, moving: dict[str, str | None]
    ) -> tuple[str | None, str | None]:
        """How a moved instance ends: (reason, message); (None, None) for other kills."""
        if task_id not in moving:
            return None, None
        if task_id in self.rebalance_moves:
            return REASON_REBALANCED, "moved to another agent by a rebalance"
        return REASON_DRAINED, "moved to another agent: its agent drains"

    def moving(self, tasks: list[Task]) -> dict[str, str | None]:
        """The app's instances to move now: those on agents an operator drains, and those
        of the current rebalance wave (with the agent chosen for each)."""
        agents = self.master.state.agents
        found: dict[str, str | None] = {}
        for task in tasks:
            if task.state not in MOVABLE_STATES:
                continue
            if task.id in self.rebalance_moves:
                found[task.id] = self.rebalance_moves[task.id]
                continue
            agent = agents.get(task.agent_id or "")
            if agent is not None and agent.drain is not None and agent.drain.rebalance is None:
                found[task.id] = None
        return found

    async def _mark_inactive(self, task_ids: tuple[str, ...], now: float) -> None:
        """Record that these unreachable tasks were given up (and replaced), so that the
        copy that goes if their agent comes back is the stale one, not its replacement."""
        tasks = self.master.state.tasks
        given_up = [
            tasks[task_id].with_changes(inactive_since=now)
            for task_id in task_ids
            if task_id in tasks and tasks[task_id].state is TaskState.TASK_UNREACHABLE
        ]
        await self.master.state.save(tasks=given_up)

    # ---- the replacement throttle ------------------------------------------------------------

    def outage(self) -> Outage:
        agents = list(self.master.state.agents.values())
        lost = {a.id: a.last_seen_at for a in agents if a.state is AgentState.UNREACHABLE}
        unreachable = recently_lost(lost, self.master.clock.wall(), THROTTLE_MEMORY_SECONDS)
        reachable = {a.id: self.master.channel.last_seen(a.id) for a in agents if a.state.reachable}
        overdue_after = OVERDUE_HEARTBEATS * self.master.config.heartbeat_interval
        return outage(unreachable, reachable, self.master.clock.monotonic(), overdue_after)

    def _update_throttle(self, now: float) -> None:
        current = self.outage()
        limit = self.master.config.unreachable_throttle_fraction
        throttled = replacement_throttled(current, limit)
        if throttled == self.throttled:
            return
        self.throttled = throttled
        if throttled:
            log.warning(
                "%d of %d agents out of contact (more than %.0f%%): tasks on unreachable "
                "agents are not replaced until enough of them are back",
                current.out,
                current.total,
                limit * 100,
            )
        else:
            log.warning(
                "%d of %d agents out of contact: replacing tasks on unreachable agents again",
                current.out,
                current.total,
            )
            self._resync = True
            self._wake.set()
        self.events.publish(
            THROTTLE_EVENT,
            now,
            throttled=throttled,
            unreachableAgents=current.out,
            totalAgents=current.total,
            fraction=round(current.fraction, 4),
            threshold=limit,
        )

    def _wait(
        self,
        app_id: str,
        count: int,
        now: float,
        allowed_at: float | None = None,
    ) -> None:
        since = self.waiting[app_id].since if app_id in self.waiting else now
        self.waiting[app_id] = Waiting(count, since, allowed_at)

    def _launch(
        self, app: AppSpec, count: int, replacing: tuple[tuple[str, str | None], ...] = ()
    ) -> list[Awaitable[Any]]:
        spec = task_spec_for(app)
        work: list[Awaitable[Any]] = [
            self.master.submit(new_task_id(app.id), spec, moved_from=old, target_agent=target)
            for old, target in replacing
        ]
        work += [self.master.submit(new_task_id(app.id), spec) for _ in range(count - len(work))]
        return work
