"""Pure rules for one app: its desired spec and its tasks in, the launches and kills out.

Three modes. MAINTAIN keeps `instances` tasks (any version) and replaces what dies, after
the app's backoff delay. RESTART is a rolling upgrade to the app's current config that
keeps ceil(instances x minimumHealthCapacity) instances serving and never runs more than
instances x (1 + maximumOverCapacity). STOP kills everything. Tasks on unreachable agents
stop counting after `inactiveAfterSeconds` (so they are replaced; the task is marked
inactive) and are killed after `expungeAfterSeconds`; while replacements are throttled (too
many agents out at once) no task becomes inactive. An inactive task whose agent comes back
counts again, and is the first to go when that leaves more instances than wanted.

Instances being moved (off a draining agent, or by a rebalance wave) are replaced like in
a rolling upgrade: a replacement starts first where `maximumOverCapacity` leaves room, the
old instance goes once it is ready, and never while fewer than
ceil(instances x minimumHealthCapacity) would stay ready. Every function takes `now`
(wall seconds) and does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from tessera.model.app import AppSpec, KillSelection, strategy_bounds, task_spec_for
from tessera.model.task import Task, TaskState

KILL_PATIENCE_SECONDS = 30.0


class Mode(StrEnum):
    MAINTAIN = "maintain"
    RESTART = "restart"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class AppActions:
    """What to do now for one app; `recheck_at` is when timers (backoff, unreachable
    timeouts) may change the answer without any task changing."""

    launch: int = 0
    kill: tuple[str, ...] = ()
    recheck_at: float | None = None
    delayed: bool = False
    # Unreachable tasks given up just now: to be marked inactive (their replacements are
    # in `launch`).
    inactive: tuple[str, ...] = ()
    # Launches (the first of `launch`) that replace instances being moved: (the moved
    # task's id, the agent chosen for its replacement or None).
    replacing: tuple[tuple[str, str | None], ...] = ()


# ---- backoff ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Consecutive failures of an app's instances and when the last one happened."""

    failures: int = 0
    last_failure_at: float = 0.0


def backoff_delay(app: AppSpec, failures: int) -> float:
    """backoffSeconds x backoffFactor^(failures-1), capped at maxLaunchDelaySeconds."""
    if failures <= 0:
        return 0.0
    try:
        delay = app.backoff_seconds * app.backoff_factor ** (failures - 1)
    except OverflowError:
        delay = math.inf
    return min(delay, app.max_launch_delay_seconds)


def record_failure(backoff: Backoff, app: AppSpec, now: float) -> Backoff:
    """One more failure; a quiet spell of delay + maxLaunchDelaySeconds forgets the past
    (Marathon drops overdue delays the same way)."""
    if backoff.failures and now - launch_allowed_at(backoff, app) > app.max_launch_delay_seconds:
        return Backoff(1, now)
    return Backoff(backoff.failures + 1, now)


def launch_allowed_at(backoff: Backoff, app: AppSpec) -> float:
    return backoff.last_failure_at + backoff_delay(app, backoff.failures)


def is_failure(task: Task, was_killing: bool = False) -> bool:
    """A terminal state nobody asked for: counts towards the backoff. A kill the master
    sent passes through TASK_KILLING; a task killed without one (by its agent, for failing
    its health checks) failed."""
    if not task.state.terminal:
        return False
    if task.state is TaskState.TASK_KILLED:
        return not was_killing or "HEALTH" in (task.reason or "").upper()
    return True


# ---- task classification ----------------------------------------------------------------------


def current_config(app: AppSpec) -> Callable[[Task], bool]:
    """Whether a task runs the app's current config: the same task spec (but for the app
    version), launched at or after the config's version (so a restart, which keeps the
    spec, still replaces the tasks from before it)."""
    target = replace(task_spec_for(app), app_version=None)
    since = app.config_version

    def check(task: Task) -> bool:
        launched = task.spec.app_version or ""
        return launched >= since and replace(task.spec, app_version=None) == target

    return check


def is_ready(task: Task, app: AppSpec) -> bool:
    """Running, and healthy / ready when the app has health / readiness checks."""
    if task.state is not TaskState.TASK_RUNNING:
        return False
    if app.health_checks and task.healthy is not True:
        return False
    return not (app.readiness_checks and task.ready is not True)


def unreachable_since(task: Task) -> float:
    return task.updated_at


@dataclass(frozen=True, slots=True)
class _Split:
    counted: list[Task]
    expunge: list[Task]
    inactive: list[Task]
    recheck_at: float | None


def _split(app: AppSpec, tasks: Iterable[Task], now: float, throttled: bool = False) -> _Split:
    """Tasks that count as instances, unreachable ones to give up on now (inactive) and
    unreachable ones to forget (expunge). While `throttled`, a task not given up yet stays
    counted, and so is neither replaced nor expunged."""
    counted: list[Task] = []
    expunge: list[Task] = []
    inactive: list[Task] = []
    recheck: list[float] = []
    strategy = app.unreachable_strategy
    for task in tasks:
        if task.state.terminal or task.state is TaskState.TASK_KILLING:
            continue
        if task.state is not TaskState.TASK_UNREACHABLE or strategy is None:
            counted.append(task)
            continue
        given_up = task.inactive_since is not None
        if throttled and not given_up:
            counted.append(task)
            continue
        since = unreachable_since(task)
        if now - since >= strategy.expunge_after_seconds:
            expunge.append(task)
            continue
        recheck.append(since + strategy.expunge_after_seconds)
        if given_up:
            continue
        if now - since >= strategy.inactive_after_seconds:
            inactive.append(task)
            continue
        recheck.append(since + strategy.inactive_after_seconds)
        counted.append(task)
    return _Split(counted, expunge, inactive, min(recheck, default=None))


# ---- kill selection ---------------------------------------------------------------------------


def _kill_rank(task: Task, app: AppSpec) -> int:
    """Which tasks go first: those doing the least good."""
    if task.state is TaskState.TASK_QUEUED:
        return 0
    if task.state is TaskState.TASK_UNREACHABLE:
        return 1
    if task.inactive_since is not None:
        return 2  # back from an unreachable agent after it was replaced: the stale copy
    if task.state in (TaskState.TASK_STAGING, TaskState.TASK_STARTING):
        return 3
    return 5 if is_ready(task, app) else 4


def choose_kills(tasks: Sequence[Task], count: int, app: AppSpec) -> list[Task]:
    """`count` tasks to kill when scaling down: not-yet-useful or stale ones first, then the
    youngest (YOUNGEST_FIRST, the default) or the oldest."""
    if count <= 0:
        return []
    youngest_first = app.kill_selection is KillSelection.YOUNGEST_FIRST

    def key(task: Task) -> tuple[int, float, str]:
        born = task.started_at or task.created_at
        return (_kill_rank(task, app), -born if youngest_first else born, task.id)

    return sorted(tasks, key=key)[:count]


# ---- the decision -----------------------------------------------------------------------------


def reconcile_app(
    app: AppSpec | None,
    mode: Mode,
    tasks: Sequence[Task],
    backoff: Backoff,
    now: float,
    throttled: bool = False,
    moving: Mapping[str, str | None] | None = None,
) -> AppActions:
    """Launches and kills that move this app's tasks towards `app` in `mode`; with
    `throttled`, tasks on unreachable agents are not given up (see `_split`). `moving`
    names the tasks to move elsewhere (task id -> the agent chosen for it, or None)."""
    if app is None or mode is Mode.STOP:
        live = [t for t in tasks if not t.state.terminal and t.state is not TaskState.TASK_KILLING]
        return AppActions(kill=tuple(t.id for t in live))
    split = _split(app, tasks, now, throttled)
    replacing: list[tuple[str, str | None]] = []
    if mode is Mode.RESTART:
        launch, kills = _rolling(app, split.counted)
    else:
        launch, kills = _maintain(app, split.counted, moving or {})
        if moving and not kills and launch == 0:
            replacing, kills = _migrate(app, split.counted, moving)
            launch = len(replacing)
    kills = [*kills, *split.expunge]
    recheck = split.recheck_at
    delayed = False
    if launch:
        allowed_at = launch_allowed_at(backoff, app)
        if now < allowed_at:
            launch, delayed = 0, True
            recheck = min(allowed_at, recheck) if recheck is not None else allowed_at
    inactive = tuple(t.id for t in split.inactive)
    if delayed:
        replacing = []
    return AppActions(
        launch, tuple(t.id for t in kills), recheck, delayed, inactive, tuple(replacing)
    )


def _maintain(
    app: AppSpec, counted: list[Task], moving: Mapping[str, str | None] = {}
) -> tuple[int, list[Task]]:
    # A moved instance and the replacement started for it count as one.
    replaced = {t.moved_from for t in counted if t.moved_from in moving}
    missing = app.instances - sum(1 for t in counted if t.id not in replaced)
    if missing >= 0:
        return missing, []
    # When there are more than wanted, those not serving yet and the stale copies of
    # replaced instances go first, then instances being moved away (a scale-down during
    # a drain empties the agent for free), then old-config instances, then the rest.
    check = current_config(app)

    def tier(task: Task) -> int:
        if task.state is TaskState.TASK_QUEUED or task.inactive_since is not None:
            return 0
        if task.id in moving:
            return 1
        return 3 if check(task) else 2

    kills: list[Task] = []
    for level in (0, 1, 2, 3):
        group = [t for t in counted if tier(t) == level]
        kills += choose_kills(group, -missing - len(kills), app)
    return 0, kills


def capacity_bounds(app: AppSpec) -> tuple[int, int]:
    """(instances that must keep serving, most instances that may run) during an upgrade."""
    strategy = app.upgrade_strategy
    return strategy_bounds(
        app.instances, strategy.minimum_health_capacity, strategy.maximum_over_capacity
    )


def _rolling(app: AppSpec, counted: list[Task]) -> tuple[int, list[Task]]:
    check = current_config(app)
    old = [t for t in counted if not check(t)]
    new = [t for t in counted if check(t)]
    target = app.instances
    minimum_healthy, maximum = capacity_bounds(app)
    kills: list[Task] = []
    if len(new) > target:
        kills = choose_kills(new, len(new) - target, app)
        new = [t for t in new if t not in kills]
    new_ready = sum(1 for t in new if is_ready(t, app))
    # Old instances are taken to be serving: kill only what the ready new ones make up for.
    serving = len(old) + new_ready
    kill_old = max(0, min(len(old), serving - minimum_healthy))
    launch = max(0, min(target - len(new), maximum - (len(old) - kill_old) - len(new)))
    if launch == 0 and kill_old == 0 and old and new_ready == len(new) and len(new) < target:
        # No room to start and no slack to stop (e.g. minimumHealthCapacity 1 with
        # maximumOverCapacity 0): stop one old instance so the upgrade can move, as
        # Marathon does.
        kill_old = 1
        launch = max(0, min(target - len(new), maximum - (len(old) - 1) - len(new)))
    kills += choose_kills(old, kill_old, app)
    return launch, kills


def _migrate(
    app: AppSpec, counted: list[Task], moving: Mapping[str, str | None]
) -> tuple[list[tuple[str, str | None]], list[Task]]:
    """Replacements to start and moved instances to stop, with `instances` tasks counted.

    A moved instance goes once its replacement is ready, or (when the surge allows no
    replacement yet) within the slack minimumHealthCapacity leaves; ready instances never
    drop below ceil(instances x minimumHealthCapacity)."""
    movers = [t for t in counted if t.id in moving]
    if not movers:
        return [], []
    minimum_healthy, maximum = capacity_bounds(app)
    replacement = {t.moved_from: t for t in counted if t.moved_from in moving}
    serving = sum(1 for t in counted if is_ready(t, app))
    kills: list[Task] = []

    def stop(task: Task) -> None:
        nonlocal serving
        kills.append(task)
        if is_ready(task, app):
            serving -= 1

    def affordable(task: Task) -> bool:
        return not is_ready(task, app) or serving - 1 >= minimum_healthy

    # Those whose replacement is ready go first.
    for task in movers:
        new = replacement.get(task.id)
        if new is not None and is_ready(new, app) and affordable(task):
            stop(task)
    unreplaced = [t for t in movers if t.id not in replacement]
    room = maximum - (len(counted) - len(kills))
    if room <= 0:
        # No surge allowed: stop instances within the slack, their replacements follow.
        for task in unreplaced:
            if affordable(task):
                stop(task)
                room += 1
    # A stopped instance that had no replacement yet gets one now (it still counts).
    starts = unreplaced[: max(0, room)]
    return [(t.id, moving[t.id]) for t in starts], kills


def converged(app: AppSpec, tasks: Sequence[Task], now: float, *, same_config: bool) -> bool:
    """Exactly `instances` tasks, all ready, none being killed; with `same_config` all of
    them also run the app's current config (a restart is finished)."""
    live = [t for t in tasks if not t.state.terminal]
    if any(_kill_pending(t, now) for t in live):
        return False
    counted = _split(app, live, now).counted
    if len(counted) != app.instances:
        return False
    check = current_config(app)
    if same_config and any(not check(t) for t in counted):
        return False
    return all(is_ready(t, app) for t in counted)


def _kill_pending(task: Task, now: float) -> bool:
    """Being killed, and not for so long that its agent is surely gone (an unreachable
    agent gets the kill when it returns; nothing should wait for that)."""
    if task.state is not TaskState.TASK_KILLING:
        return False
    return now - task.updated_at <= task.spec.kill_grace_seconds + KILL_PATIENCE_SECONDS
