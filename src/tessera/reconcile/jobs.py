"""Pure decisions for jobs: when schedules fire, what concurrency allows, how a run moves
on from its task's state, retries, dependency triggers, cycles and history.

Everything takes `now` (wall-clock epoch seconds) as a parameter; the jobs controller reads
the clock, applies the decisions and writes them to the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.model.constraints import parse_constraints
from tessera.model.job import (
    ConcurrencyPolicy,
    FinishedRun,
    JobHistory,
    JobRun,
    MissedRun,
    RestartPolicy,
    RunStatus,
    RunTask,
    ScheduleSpec,
)
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.reconcile.cron import next_run, runs_between

# Retries back off like Marathon's launch queue: 1 s, times 1.15 per failure, at most 300 s.
RETRY_BACKOFF = 1.0
RETRY_FACTOR = 1.15
RETRY_MAX_DELAY = 300.0
# How many missed scheduled times a decision lists (the count is always complete).
MISSED_LISTED = 20

_STARTING_STATES = frozenset(
    {TaskState.TASK_QUEUED, TaskState.TASK_STAGING, TaskState.TASK_STARTING}
)

# ---- schedules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    """What to do about one schedule now."""

    fire_at: float | None  # start a run for this scheduled time
    missed: tuple[float, ...]  # scheduled times that passed without a run (the latest few)
    missed_count: int
    mark: float  # the latest scheduled time now handled
    next_due: float  # when to look at this schedule again


def schedule_decision(schedule: ScheduleSpec, mark: float, now: float) -> ScheduleDecision:
    """Every scheduled time after `mark` up to `now` is handled exactly once: the latest
    starts a run if it is within the starting deadline, all others are missed (a master
    that was down does not start a burst of stale runs on recovery)."""
    due = next_run(schedule.cron, schedule.timezone, mark)
    if due > now:
        return ScheduleDecision(None, (), 0, mark, due)
    times, count = runs_between(
        schedule.cron, schedule.timezone, mark, now, limit=MISSED_LISTED + 1
    )
    latest = times[-1]
    next_due = next_run(schedule.cron, schedule.timezone, latest)
    if now - latest <= schedule.starting_deadline_seconds:
        return ScheduleDecision(
            latest, tuple(times[:-1][-MISSED_LISTED:]), count - 1, latest, next_due
        )
    return ScheduleDecision(None, tuple(times[-MISSED_LISTED:]), count, latest, next_due)


@dataclass(frozen=True, slots=True)
class ConcurrencyDecision:
    start: bool
    stop: tuple[str, ...] = ()  # run IDs to stop first (REPLACE)
    reason: str | None = None  # why no run starts


def concurrency_decision(
    policy: ConcurrencyPolicy, active_run_ids: Sequence[str]
) -> ConcurrencyDecision:
    if not active_run_ids or policy is ConcurrencyPolicy.ALLOW:
        return ConcurrencyDecision(start=True)
    if policy is ConcurrencyPolicy.FORBID:
        listed = ", ".join(active_run_ids)
        return ConcurrencyDecision(start=False, reason=f"FORBID: run {listed} still active")
    return ConcurrencyDecision(start=True, stop=tuple(active_run_ids))


# ---- runs ----------------------------------------------------------------------------------


def job_task_id(job_id: str, run_id: str, unique: str) -> str:
    """Metronome's task IDs: the run's path with underscores, a dot, then a unique part."""
    return f"{job_id.replace('.', '_')}_{run_id}.{unique}"


def task_spec_for(run: JobRun) -> TaskSpec:
    spec = run.spec
    constraints = tuple(
        # Metronome's EQ is the older name of IS: the attribute must equal the value.
        (c.attribute, "IS" if c.operator == "EQ" else c.operator, *([c.value] if c.value else []))
        for c in spec.constraints
    )
    # Fails loudly on a constraint that slipped past the API (it would never place).
    parse_constraints([list(c) for c in constraints])
    return TaskSpec(
        name=run.job_id,
        cmd=spec.cmd,
        args=spec.args,
        cpus=spec.cpus,
        mem=spec.mem,
        disk=spec.disk,
        gpus=spec.gpus,
        env=dict(spec.env),
        constraints=constraints,
        user=spec.user,
        kill_grace_seconds=(
            spec.task_kill_grace_seconds if spec.task_kill_grace_seconds is not None else 3.0
        ),
        app_id=run.job_id,
        app_version=run.id,
        role=spec.role,
        priority=spec.priority,
        fetch=tuple(
            {"uri": a.uri, "extract": a.extract, "executable": a.executable, "cache": a.cache}
            for a in spec.artifacts
        ),
        container=spec.container(),
        secrets=spec.secret_uses(),
    )


@dataclass(frozen=True, slots=True)
class RunStep:
    """A run after looking at its task. The controller stores `run` first, then submits or
    kills, so a master that stops in between repeats the same step, never a different one."""

    run: JobRun
    submit: str | None = None  # task ID to submit
    kill: str | None = None  # task ID to kill
    wake_at: float | None = None  # look again at this time even if nothing happens


def advance_run(run: JobRun, task: Task | None, now: float, fresh_task_id: str) -> RunStep:
    """The next step of a run, from its record and the state of its current task.

    `fresh_task_id` names the task of a new attempt, if this step starts one."""
    if run.status.finished:
        return RunStep(run)
    if task is not None:
        run = run.with_changes(tasks=_observed(run.tasks, task))
    if run.stop_requested:
        if task is not None and not task.state.terminal:
            killing = task.state is TaskState.TASK_KILLING
            return RunStep(run, kill=None if killing else task.id)
        return RunStep(_finish(run, RunStatus.FAILED, now, run.message or "stopped"))
    if run.current_task is None:
        return _next_attempt(run, now, fresh_task_id)
    if task is None:
        # Recorded, never submitted (or the master stopped in between): submit it now.
        return RunStep(run, submit=run.current_task)
    if task.state in _STARTING_STATES:
        return _starting(run, task, now)
    if task.state is TaskState.TASK_FINISHED:
        return RunStep(_finish(run, RunStatus.SUCCESS, now, None))
    if not task.state.terminal:
        return RunStep(run.with_changes(status=RunStatus.ACTIVE))
    return _after_failure(run, task, now)


def _observed(tasks: tuple[RunTask, ...], task: Task) -> tuple[RunTask, ...]:
    seen = RunTask(
        id=task.id,
        status=task.state.value,
        started_at=task.started_at,
        completed_at=task.finished_at,
        exit_code=task.exit_code,
        message=task.message,
    )
    return tuple(seen if t.id == task.id else t for t in tasks)


def _finish(run: JobRun, status: RunStatus, now: float, message: str | None) -> JobRun:
    return run.with_changes(status=status, completed_at=now, message=message, next_attempt_at=None)


def _next_attempt(run: JobRun, now: float, fresh_task_id: str) -> RunStep:
    if run.next_attempt_at is not None and now < run.next_attempt_at:
        return RunStep(run, wake_at=run.next_attempt_at)
    started = run.with_changes(
        current_task=fresh_task_id,
        attempt_started_at=now,
        next_attempt_at=None,
        tasks=(*run.tasks, RunTask(fresh_task_id, TaskState.TASK_QUEUED.value)),
    )
    return RunStep(started, submit=fresh_task_id)


def _starting(run: JobRun, task: Task, now: float) -> RunStep:
    if run.status in (RunStatus.INITIAL, RunStatus.STARTING):
        run = run.with_changes(status=RunStatus.STARTING)
    launch_deadline = (run.attempt_started_at or run.created_at) + run.spec.max_launch_delay
    if now >= launch_deadline:
        message = f"not started within maxLaunchDelay ({run.spec.max_launch_delay} s)"
        return RunStep(_finish(run, RunStatus.FAILED, now, message), kill=task.id)
    return RunStep(run, wake_at=launch_deadline)


def retry_at(run: JobRun, now: float) -> float | None:
    """When to start the next attempt after a failed one, or None to fail the run.

    ON_FAILURE retries while the run is younger than activeDeadlineSeconds (forever without
    one), as Metronome does; each retry waits a little longer than the one before."""
    if run.spec.restart_policy is not RestartPolicy.ON_FAILURE:
        return None
    failures = sum(1 for t in run.tasks if TaskState(t.status).terminal)
    delay = min(RETRY_BACKOFF * RETRY_FACTOR ** max(failures - 1, 0), RETRY_MAX_DELAY)
    at = now + delay
    deadline = run.spec.active_deadline_seconds
    if deadline is not None and at >= run.created_at + deadline:
        return None
    return at


def _after_failure(run: JobRun, task: Task, now: float) -> RunStep:
    at = retry_at(run, now)
    if at is None:
        message = task.message or f"task {task.id} ended {task.state.value}"
        return RunStep(_finish(run, RunStatus.FAILED, now, message))
    waiting = run.with_changes(current_task=None, next_attempt_at=at)
    return RunStep(waiting, wake_at=at)


# ---- history -------------------------------------------------------------------------------


def record_finished(history: JobHistory, run: JobRun, limit: int) -> JobHistory:
    finished = FinishedRun(run.id, run.created_at, run.completed_at or 0.0, run.task_ids)
    if run.status is RunStatus.SUCCESS:
        return history.with_changes(
            success_count=history.success_count + 1,
            last_success_at=finished.finished_at,
            successful_runs=(finished, *history.successful_runs)[:limit],
        )
    return history.with_changes(
        failure_count=history.failure_count + 1,
        last_failure_at=finished.finished_at,
        failed_runs=(finished, *history.failed_runs)[:limit],
    )


def record_missed(
    history: JobHistory, missed: Sequence[MissedRun], count: int, limit: int
) -> JobHistory:
    newest_first = tuple(reversed(missed))
    return history.with_changes(
        missed_count=history.missed_count + count,
        missed_runs=(*newest_first, *history.missed_runs)[:limit],
    )


# ---- dependencies --------------------------------------------------------------------------


def dependency_trigger(parents: Mapping[str, JobHistory | None], since: float) -> float | None:
    """A job with dependencies runs when each parent's latest finished run succeeded after
    `since` (the last success that triggered it, or its creation). Returns the new mark
    (the latest of those successes), or None while some parent is not there yet."""
    if not parents:
        return None
    latest = since
    for history in parents.values():
        if history is None or history.last_success_at is None:
            return None
        succeeded = history.last_success_at
        if succeeded <= since:
            return None
        if history.last_failure_at is not None and history.last_failure_at > succeeded:
            return None
        latest = max(latest, succeeded)
    return latest


def find_cycle(dependencies: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a path that returns to its start (`a -> b -> a`), or None."""
    done: set[str] = set()
    for root in sorted(dependencies):
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                path.append(node)
                on_path.add(node)
            parents = dependencies.get(node, ())
            if index < len(parents):
                stack.append((node, index + 1))
                parent = parents[index]
                if parent in on_path:
                    return [*path[path.index(parent) :], parent]
                if parent not in done:
                    stack.append((parent, 0))
                continue
            path.pop()
            on_path.discard(node)
            done.add(node)
    return None


def active_run_ids(runs: Sequence[JobRun]) -> list[str]:
    return [run.id for run in runs if not run.status.finished and not run.stop_requested]
