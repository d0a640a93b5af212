"""The rebalancer ("clear lines"): plan which agents to empty, then move their instances
wave by wave with the drain's safety rules.

`plan` asks the pure planner (`placement.rebalance.plan_rebalance`) about the cluster as it
runs now. `start` records a rebalance (durably, store kind `rebalances`), takes the agents
it empties out of service (a drain owned by the rebalance, so nothing new lands there) and
runs the waves: the services controller replaces each instance of the current wave on the
agent the plan chose (start-before-kill within the app's upgradeStrategy, see
`reconcile.services`), and the next wave starts once every instance of this one has gone.
`cancel` stops after the current wave; a wave that does not finish within the wave timeout
stops the rebalance (FAILED). Either way the emptied agents go back into service. After a
master restart a running rebalance resumes at its wave.

Never moved: instances of apps labelled `TESSERA_REBALANCE=off` (false/no/0), instances
that are not ready, that a rebalance moved within the cool-down, of apps in a deployment or
not at their instance count, of apps whose role's quota has no room for a replacement next
to the old instance, and tasks of jobs and one-off tasks (their agents stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tessera.master.config import MasterConfig
from tessera.master.controllers.drain import DrainController
from tessera.master.controllers.services import ServicesController
from tessera.master.core import Master
from tessera.master.events import timestamp
from tessera.master.placement_adapter import build_snapshot, policy_for, spec_request
from tessera.model.agent import Drain
from tessera.model.app import AppSpec, task_spec_for
from tessera.model.task import Task
from tessera.placement.fairness import quota_copies
from tessera.placement.rebalance import Move, MoveRules, RebalancePlan, plan_rebalance
from tessera.placement.snapshot import Snapshot
from tessera.reconcile.services import is_ready
from tessera.store import Delete, Put

log = logging.getLogger(__name__)

REBALANCES = "rebalances"
OPT_OUT_LABEL = "TESSERA_REBALANCE"
_OFF = frozenset({"off", "false", "no", "0"})
CHECK_SECONDS = 0.5
KEEP_FINISHED = 20


class Status(StrEnum):
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    FINISHED = "FINISHED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def active(self) -> bool:
        return self in (Status.RUNNING, Status.CANCELLING)


class RebalanceConflict(Exception):
    """Another rebalance runs (409 with its id)."""

    def __init__(self, rebalance_id: str) -> None:
        super().__init__(f"rebalance {rebalance_id} is running; cancel it or wait for it")
        self.rebalance_id = rebalance_id


class RebalanceFinished(Exception):
    """The rebalance has already ended (409)."""


@dataclass(frozen=True, slots=True)
class Rebalance:
    """A rebalance as the store keeps it: its plan, its current wave and its outcome."""

    id: str
    status: Status
    created_at: float
    updated_at: float
    waves: tuple[tuple[Move, ...], ...]
    freed: tuple[str, ...]
    summary: Mapping[str, int]
    wave: int = 0  # index of the wave under way (== len(waves) once all are done)
    wave_started_at: float | None = None
    finished_at: float | None = None
    user: str | None = None
    message: str | None = None
    done: tuple[str, ...] = field(default_factory=tuple)  # moved task ids

    @property
    def moves(self) -> list[Move]:
        return [move for wave in self.waves for move in wave]

    @property
    def current_wave(self) -> tuple[Move, ...]:
        """The moves under way (none once it has ended or all waves are done)."""
        if self.status.active and self.wave < len(self.waves):
            return self.waves[self.wave]
        return ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "waves": [[m.to_json() for m in wave] for wave in self.waves],
            "freed": list(self.freed),
            "summary": dict(self.summary),
            "wave": self.wave,
            "wave_started_at": self.wave_started_at,
            "finished_at": self.finished_at,
            "user": self.user,
            "message": self.message,
            "done": list(self.done),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Rebalance:
        return Rebalance(
            id=str(data["id"]),
            status=Status(data["status"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            waves=tuple(tuple(Move.from_json(m) for m in wave) for wave in data["waves"]),
            freed=tuple(data["freed"]),
            summary=dict(data.get("summary", {})),
            wave=int(data.get("wave", 0)),
            wave_started_at=data.get("wave_started_at"),
            finished_at=data.get("finished_at"),
            user=data.get("user"),
            message=data.get("message"),
            done=tuple(data.get("done", ())),
        )


def opted_out(app: AppSpec) -> bool:
    return str(app.labels.get(OPT_OUT_LABEL, "")).strip().lower() in _OFF


def move_rules(apps: Mapping[str, AppSpec]) -> dict[str, MoveRules]:
    """How each app's instances may move: its shape, count and upgradeStrategy."""
    rules = {}
    for app_id, app in apps.items():
        strategy = app.upgrade_strategy
        rules[app_id] = MoveRules(
            request=spec_request(task_spec_for(app), app_id, app_id),
            instances=app.instances,
            minimum_health_capacity=strategy.minimum_health_capacity,
            maximum_over_capacity=strategy.maximum_over_capacity,
            movable=not opted_out(app),
        )
    return rules


class RebalanceController:
    def __init__(
        self,
        master: Master,
        services: ServicesController,
        drains: DrainController,
        config: MasterConfig,
    ) -> None:
        self.master = master
        self.services = services
        self.drains = drains
        self.config = config
        self.rebalances: dict[str, Rebalance] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.rebalances = {
            key: Rebalance.from_json(data)
            for key, data in (await self.master.store.load(REBALANCES)).items()
        }
        running = self.running()
        if running is not None:
            log.info("rebalance %s resumes at wave %d", running.id, running.wave + 1)
            self._set_moves(running)
        self._loops = [asyncio.create_task(self._run(), name="rebalance")]
        if self.config.rebalance_interval > 0:
            self._loops.append(asyncio.create_task(self._periodic(), name="rebalance timer"))

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        self.services.rebalance_moves.clear()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.advance()
            except Exception:
                log.exception("rebalance step failed; retrying")

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.rebalance_interval)
            if self.running() is not None:
                continue
            try:
                found = await self.start_rebalance(None, user=None)
            except RebalanceConflict:
                continue
            except Exception:
                log.exception("periodic rebalance failed")
                continue
            if isinstance(found, Rebalance):
                log.info("periodic rebalance %s: %d moves", found.id, len(found.moves))

    # ---- planning ------------------------------------------------------------------------

    def running(self) -> Rebalance | None:
        return next((r for r in self.rebalances.values() if r.status.active), None)

    def _pinned(self, now: float) -> set[str]:
        """Instances that must stay where they are now (see the module docstring)."""
        state = self.services.state
        pinned: set[str] = set()
        cooldown = self.config.rebalance_cooldown
        for app_id, tasks in state.live_tasks.items():
            app = state.apps.get(app_id)
            unsettled = (
                app is None
                or state.deployment_of(app_id) is not None
                or len(tasks) != app.instances
            )
            for task in tasks.values():
                if (
                    unsettled
                    or app is None
                    or not is_ready(task, app)
                    or (task.moved_from is not None and now - task.created_at < cooldown)
                ):
                    pinned.add(task.id)
        return pinned

    def _without_quota_room(self, snapshot: Snapshot, rules: Mapping[str, MoveRules]) -> set[str]:
        """Instances of apps whose role's quota has no room for a replacement next to the
        instance it replaces (start-before-kill counts both): they stay."""
        quotas = self.master.planner.quotas
        if quotas is None:
            return set()
        limits = quotas.limits()
        policy = policy_for(limits)
        full: set[str] = set()
        for app_id, rule in rules.items():
            role = rule.request.role
            quota = limits.get(role)
            if quota is None:
                continue
            counted_out = quota.instances is not None and (
                quota.instances - quotas.usage(role).instances < 1
            )
            demand = rule.request.demand()
            if (
                counted_out
                or quota_copies(policy.quota(role), snapshot.allocated(role), demand) < 1
            ):
                full.add(app_id)
        return {task.task_id for task in snapshot.tasks.tasks if task.app_id in full}

    async def plan(self, max_moves: int | None) -> tuple[RebalancePlan, float]:
        """The plan for the cluster as it runs now, and how long planning took (s)."""
        state = self.master.state
        agents = list(state.agents.values())
        running = {agent.id: state.active_tasks_on(agent.id) for agent in agents}
        snapshot = build_snapshot(agents, running)
        rules = move_rules(self.services.state.apps)
        pinned = self._pinned(self.master.clock.wall())
        pinned |= self._without_quota_room(snapshot, rules)
        began = time.perf_counter()
        plan = await asyncio.to_thread(
            plan_rebalance, snapshot, rules, max_moves=max_moves, pinned=pinned
        )
        return plan, time.perf_counter() - began

    # ---- commands ------------------------------------------------------------------------

    async def start_rebalance(
        self, max_moves: int | None, user: str | None
    ) -> Rebalance | RebalancePlan:
        """Plan and start; answers the plan itself when it moves nothing (with its reason)."""
        async with self._lock:
            running = self.running()
            if running is not None:
                raise RebalanceConflict(running.id)
            plan, _ = await self.plan(max_moves)
            if not plan.moves:
                return plan
            now = self.master.clock.wall()
            rebalance = Rebalance(
                id=f"rebalance-{secrets.token_hex(4)}",
                status=Status.RUNNING,
                created_at=now,
                updated_at=now,
                waves=plan.waves,
                freed=plan.freed,
                summary={
                    "agentsBefore": plan.agents_before,
                    "agentsAfter": plan.agents_after,
                    "lowerBound": plan.lower_bound,
                    "minimumMoves": plan.minimum_moves,
                },
                wave_started_at=now,
                user=user,
            )
            await self._save(rebalance)
            for agent_id in plan.freed:
                agent = self.master.state.agents.get(agent_id)
                if agent is not None and agent.drain is None:
                    await self.drains.mark(agent, Drain(now, rebalance=rebalance.id), user)
            self._set_moves(rebalance)
            self._publish(rebalance, "rebalance_started_event")
            log.info(
                "rebalance %s: %d moves in %d waves free %d agents",
                rebalance.id,
                len(rebalance.moves),
                len(rebalance.waves),
                len(rebalance.freed),
            )
        self._wake.set()
        return rebalance

    async def cancel(self, rebalance_id: str) -> Rebalance:
        """Stop after the current wave. KeyError: unknown id."""
        async with self._lock:
            rebalance = self.rebalances[rebalance_id]
            if not rebalance.status.active:
                raise RebalanceFinished(
                    f"rebalance {rebalance_id} has already ended ({rebalance.status.value})"
                )
            if rebalance.status is Status.RUNNING:
                rebalance = replace(
                    rebalance, status=Status.CANCELLING, updated_at=self.master.clock.wall()
                )
                await self._save(rebalance)
                self._publish(rebalance, "rebalance_cancelling_event")
        self._wake.set()
        return rebalance

    # ---- execution -----------------------------------------------------------------------

    def _live(self, task_id: str) -> Task | None:
        task = self.master.state.tasks.get(task_id)
        return task if task is not None and not task.state.terminal else None

    def _set_moves(self, rebalance: Rebalance) -> None:
        """The services controller moves the instances of the current wave."""
        wanted: dict[str, str | None] = {}
        apps: set[str] = set()
        for move in rebalance.current_wave:
            if self._live(move.task_id) is not None:
                wanted[move.task_id] = move.target
                apps.add(move.app_id)
        moves = self.services.rebalance_moves
        if wanted == moves:
            return
        apps.update(
            self.master.state.tasks[t].spec.app_id or ""
            for t in moves
            if t in self.master.state.tasks
        )
        moves.clear()
        moves.update(wanted)
        for app_id in apps:
            self.services.wake(app_id)

    def _wave_done(self, wave: tuple[Move, ...]) -> bool:
        """Every instance of the wave has gone (its replacement took over, or it ended)."""
        return all(self._live(move.task_id) is None for move in wave)

    async def advance(self) -> None:
        async with self._lock:
            rebalance = self.running()
            if rebalance is None:
                return
            now = self.master.clock.wall()
            wave = rebalance.current_wave
            if wave and not self._wave_done(wave):
                started = rebalance.wave_started_at or now
                if now - started > self.config.rebalance_wave_timeout:
                    left = [m.task_id for m in wave if self._live(m.task_id) is not None]
                    await self._finish(
                        rebalance,
                        Status.FAILED,
                        f"wave {rebalance.wave + 1} did not finish within "
                        f"{self.config.rebalance_wave_timeout:g} s; still to move: "
                        + ", ".join(left),
                    )
                else:
                    self._set_moves(rebalance)  # instances that ended meanwhile move no more
                return
            done = rebalance.done + tuple(m.task_id for m in wave)
            following = rebalance.wave + 1 if wave else rebalance.wave
            rebalance = replace(rebalance, done=done, wave=following, updated_at=now)
            if rebalance.status is Status.CANCELLING:
                await self._finish(rebalance, Status.CANCELLED, "cancelled between waves")
                return
            if following >= len(rebalance.waves):
                await self._finish(rebalance, Status.FINISHED, None)
                return
            rebalance = replace(rebalance, wave_started_at=now)
            await self._save(rebalance)
            self._set_moves(rebalance)
            self._publish(rebalance, "rebalance_wave_event")

    async def _finish(self, rebalance: Rebalance, status: Status, message: str | None) -> None:
        now = self.master.clock.wall()
        ended = replace(rebalance, status=status, message=message, finished_at=now, updated_at=now)
        await self._save(ended)
        self.services.rebalance_moves.clear()
        self.services.wake()
        for agent_id in rebalance.freed:
            agent = self.master.state.agents.get(agent_id)
            if agent is not None and agent.drain is not None and agent.drain.rebalance == ended.id:
                await self.drains.reactivate(agent_id, owner=ended.id)
        self._publish(ended, "rebalance_finished_event")
        log.info("rebalance %s %s%s", ended.id, status.value, f": {message}" if message else "")
        await self._forget_old()

    async def _save(self, rebalance: Rebalance) -> None:
        await self.master.store.commit([Put(REBALANCES, rebalance.id, rebalance.to_json())])
        self.rebalances[rebalance.id] = rebalance

    async def _forget_old(self) -> None:
        ended = sorted(
            (r for r in self.rebalances.values() if not r.status.active),
            key=lambda r: r.created_at,
        )
        stale = ended[:-KEEP_FINISHED]
        if stale:
            await self.master.store.commit([Delete(REBALANCES, r.id) for r in stale])
            for r in stale:
                del self.rebalances[r.id]

    def _publish(self, rebalance: Rebalance, kind: str) -> None:
        self.services.events.publish(kind, self.master.clock.wall(), **self.view(rebalance))

    # ---- views ---------------------------------------------------------------------------

    def view(self, rebalance: Rebalance) -> dict[str, Any]:
        moves = rebalance.moves
        current = rebalance.current_wave
        done = set(rebalance.done)
        done.update(m.task_id for m in current if self._live(m.task_id) is None)
        document: dict[str, Any] = {
            "id": rebalance.id,
            "status": rebalance.status.value,
            "user": rebalance.user,
            "createdAt": timestamp(rebalance.created_at),
            "updatedAt": timestamp(rebalance.updated_at),
            "finishedAt": timestamp(rebalance.finished_at) if rebalance.finished_at else None,
            "wave": min(rebalance.wave + 1, len(rebalance.waves)),
            "waves": len(rebalance.waves),
            "moves": len(moves),
            "movesDone": sum(1 for m in moves if m.task_id in done),
            "freed": list(rebalance.freed),
            **dict(rebalance.summary),
            "currentWave": [m.to_json() for m in current],
            "plan": [[m.to_json() for m in wave] for wave in rebalance.waves],
        }
        if rebalance.message is not None:
            document["message"] = rebalance.message
        return document
