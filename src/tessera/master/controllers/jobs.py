"""The jobs controller: fires schedules, starts and follows runs, retries, records history.

Level-based: a pass over a set of dirty job IDs re-reads each job's records and the tasks of
its runs and applies the pure decisions of `tessera.reconcile.jobs`. A job becomes dirty
when the API changes it, when a task of one of its runs changes (task listener), when a
parent job finishes a run, or when its timer comes due (the next scheduled time, a retry,
a launch deadline). The loop sleeps until the earliest timer, never longer.

Durability: a pass commits its new and changed runs (with the schedule marks that started
them) in one store transaction before it submits or kills any task, so a master stopped at
any point neither loses a run nor starts one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import secrets
import string
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tessera.clock import Clock
from tessera.master.controllers.job_records import JobRecords, RunChange
from tessera.model.job import (
    Job,
    JobMarks,
    JobRun,
    JobSpec,
    MissedRun,
    RunStatus,
    ScheduleSpec,
    Trigger,
)
from tessera.model.task import Task
from tessera.reconcile.jobs import (
    active_run_ids,
    advance_run,
    concurrency_decision,
    dependency_trigger,
    find_cycle,
    job_task_id,
    record_finished,
    record_missed,
    schedule_decision,
    task_spec_for,
)

if TYPE_CHECKING:
    from tessera.master.core import Master

log = logging.getLogger(__name__)

# Even with no timer due the loop looks again this often: a wall clock set forward by an
# operator is noticed within this time.
MAX_IDLE_SECONDS = 30.0
_RUN_ID_CHARS = string.ascii_letters + string.digits


class JobsController:
    def __init__(self, master: Master, clock: Clock | None = None, history_limit: int = 10):
        self.master = master
        self.clock = clock or master.clock
        self.records = JobRecords(master.store, history_limit)
        self._dirty: set[str] = set()
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        # (due, job ID); `_due` holds each job's live entry, older ones are skipped.
        self._timers: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        master.state.subscribe(self._on_task)

    # ---- lifecycle (a master Component) ------------------------------------------------

    async def start(self) -> None:
        await self.records.load()
        self.mark_dirty(self.records.all_job_ids())
        self._loop = asyncio.create_task(self._run(), name="jobs")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _reload(self) -> None:
        self.records = JobRecords(self.master.store, self.records.limit)
        await self.records.load()
        self.mark_dirty(self.records.all_job_ids())

    def mark_dirty(self, job_ids: Iterable[str]) -> None:
        self._dirty.update(job_ids)
        self.wake()

    def wake(self) -> None:
        """Look at the timers again now (tests call this after moving a fake clock)."""
        self._woken = True
        if self._waiter is not None:
            self._resolve(self._waiter)

    def _on_task(self, _previous: Task | None, task: Task) -> None:
        job_id = self.records.job_of_task(task.id)
        if job_id is not None:
            self.mark_dirty((job_id,))

    async def _run(self) -> None:
        while True:
            if not self._dirty and not self._woken:
                await self._sleep(self._idle_seconds())
            self._woken = False
            try:
                await self.sync()
            except Exception:
                log.exception("jobs pass failed; retrying on the next wake-up")
                await asyncio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        """Until `wake()` or for `seconds`, whichever comes first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(seconds, self._resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    @staticmethod
    def _resolve(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    def _idle_seconds(self) -> float:
        if not self._timers:
            return MAX_IDLE_SECONDS
        return min(MAX_IDLE_SECONDS, max(0.0, self._timers[0][0] - self.clock.wall()))

    def _set_timer(self, job_id: str, due: float | None) -> None:
        if due is None:
            self._due.pop(job_id, None)
            return
        if self._due.get(job_id) == due:
            return
        self._due[job_id] = due
        heapq.heappush(self._timers, (due, job_id))

    def _pop_due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            due, job_id = heapq.heappop(self._timers)
            if self._due.get(job_id) == due:
                del self._due[job_id]
                self._dirty.add(job_id)

    # ---- the reconcile pass ------------------------------------------------------------

    async def sync(self) -> None:
        """One pass over every dirty or due job."""
        async with self._lock:
            now = self.clock.wall()
            self._pop_due(now)
            job_ids, self._dirty = self._dirty, set()
            if not job_ids:
                return
            change = RunChange()
            try:
                for job_id in sorted(job_ids):
                    self._set_timer(job_id, self._reconcile(job_id, now, change))
                await self._apply(change)
            except Exception:
                # Memory may be ahead of a commit that failed: start again from the store,
                # so that no task is ever submitted for a run the store does not hold.
                await self._reload()
                raise

    def _reconcile(self, job_id: str, now: float, change: RunChange) -> float | None:
        """Decide for one job; returns when to look at it again without an event."""
        wakes: list[float] = []
        # Runs first: a run that just ended must not count as active for a schedule.
        for run in self.records.active_runs(job_id):
            step = advance_run(
                run, self._task_of(run), now, job_task_id(job_id, run.id, str(uuid.uuid4()))
            )
            if step.wake_at is not None:
                wakes.append(step.wake_at)
            if step.run != run:
                self._changed_run(step.run, change)
            if step.submit is not None:
                change.submits.append((step.submit, task_spec_for(step.run)))
            if step.kill is not None:
                change.kills.append(step.kill)
        job = self.records.jobs.get(job_id)
        if job is not None:
            wakes += self._fire_schedules(job, now, change)
            self._trigger_dependencies(job, now, change)
        return min(wakes, default=None)

    def _task_of(self, run: JobRun) -> Task | None:
        return self.master.state.tasks.get(run.current_task) if run.current_task else None

    def _changed_run(self, run: JobRun, change: RunChange) -> None:
        self.records.put_run(run, change)
        if not run.status.finished:
            return
        job = self.records.jobs.get(run.job_id)
        if job is None:  # its job was deleted: nothing keeps a record of it
            self.records.forget_run(run, change)
            return
        history = record_finished(self.records.history(run.job_id), run, self.records.limit)
        self.records.put_history(run.job_id, history, change)
        self.records.prune_finished(run.job_id, change)
        self.mark_dirty(self.records.children_of(run.job_id))

    def _fire_schedules(self, job: Job, now: float, change: RunChange) -> list[float]:
        wakes = []
        marks = self.records.marks(job.id)
        for schedule in job.schedules:
            if not schedule.enabled:
                continue
            mark = marks.schedules.get(schedule.id, job.created_at)
            decision = schedule_decision(schedule, mark, now)
            wakes.append(decision.next_due)
            if decision.mark == mark:
                continue
            missed = [
                MissedRun(schedule.id, t, "starting deadline passed") for t in decision.missed
            ]
            missed_count = decision.missed_count
            marks = marks.with_schedule(schedule.id, decision.mark)
            if decision.fire_at is not None:
                active = active_run_ids(self.records.active_runs(job.id))
                policy = concurrency_decision(schedule.concurrency_policy, active)
                for run_id in policy.stop:
                    self._request_stop(job.id, run_id, "replaced by a newer scheduled run", change)
                if policy.start:
                    self._new_run(job, now, change, Trigger.SCHEDULE, schedule.id, decision.fire_at)
                else:
                    missed.append(MissedRun(schedule.id, decision.fire_at, policy.reason or ""))
                    missed_count += 1
            if missed_count:
                history = record_missed(
                    self.records.history(job.id), missed, missed_count, self.records.limit
                )
                self.records.put_history(job.id, history, change)
                log.info("job %s: %d scheduled runs missed", job.id, missed_count)
            self.records.put_marks(job.id, marks, change)
        return wakes

    def _trigger_dependencies(self, job: Job, now: float, change: RunChange) -> None:
        if not job.spec.dependencies:
            return
        marks = self.records.marks(job.id)
        since = marks.dependencies if marks.dependencies is not None else job.created_at
        parents = {p: self.records.histories.get(p) for p in job.spec.dependencies}
        triggered = dependency_trigger(parents, since)
        if triggered is None:
            return
        self.records.put_marks(job.id, marks.with_changes(dependencies=triggered), change)
        self._new_run(job, now, change, Trigger.DEPENDENCY)

    def _new_run(
        self,
        job: Job,
        now: float,
        change: RunChange,
        trigger: Trigger,
        schedule_id: str | None = None,
        scheduled_at: float | None = None,
    ) -> JobRun:
        run_id = self._new_run_id(job.id, now)
        run = JobRun(
            id=run_id,
            job_id=job.id,
            spec=job.spec.run,
            status=RunStatus.INITIAL,
            created_at=now,
            trigger=trigger,
            schedule_id=schedule_id,
            scheduled_at=scheduled_at,
        )
        step = advance_run(run, None, now, job_task_id(job.id, run_id, str(uuid.uuid4())))
        self.records.put_run(step.run, change)
        if step.submit is not None:
            change.submits.append((step.submit, task_spec_for(step.run)))
        return step.run

    def _new_run_id(self, job_id: str, now: float) -> str:
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")
        while True:
            run_id = stamp + "".join(secrets.choice(_RUN_ID_CHARS) for _ in range(5))
            if self.records.run(job_id, run_id) is None:
                return run_id

    def _request_stop(self, job_id: str, run_id: str, message: str, change: RunChange) -> None:
        run = self.records.run(job_id, run_id)
        if run is None or run.status.finished or run.stop_requested:
            return
        stopping = run.with_changes(stop_requested=True, message=message)
        self.records.put_run(stopping, change)
        task = self._task_of(stopping)
        if task is not None and not task.state.terminal:
            change.kills.append(task.id)
        self._dirty.add(job_id)

    async def _apply(self, change: RunChange) -> None:
        """Commit the pass, then act on it: the store knows every run before any task."""
        if change.operations:
            try:
                await self.master.store.commit(change.operations)
            except Exception:
                await self._reload()  # memory is ahead of the store: undo
                raise
        if change.submits:
            await asyncio.gather(
                *(self.master.submit(task_id, spec) for task_id, spec in change.submits)
            )
        for task_id in change.kills:
            if task_id in self.master.state.tasks:
                await self.master.kill(task_id)
        if self._dirty:
            self.wake()

    # ---- commands from the API (each checked and applied under the lock) ---------------

    async def create_job(self, job: Job) -> Job:
        async with self._lock:
            if job.id in self.records.jobs:
                raise JobConflict("Job with this id already exists")
            self._check_dependencies(job)
            now = self.clock.wall()
            job = job.with_changes(created_at=now)
            marks = JobMarks()
            for schedule in job.schedules:
                marks = marks.with_schedule(schedule.id, now)
            await self._store_job(job, marks)
        return job

    async def update_job(self, spec: JobSpec) -> Job:
        """Replace a job's spec; its schedules stay (Metronome's PUT)."""
        async with self._lock:
            job = self._job(spec.id).with_changes(spec=spec)
            self._check_dependencies(job)
            await self._store_job(job, self.records.marks(job.id))
        return job

    async def delete_job(self, job_id: str, stop_current_runs: bool) -> Job:
        """Delete a job with its schedules and history; its active runs are stopped."""
        async with self._lock:
            job = self._job(job_id)
            children = sorted(self.records.children_of(job_id))
            if children:
                raise JobConflict(f"Job {job_id} is a dependency of {', '.join(children)}")
            active = self.records.active_runs(job_id)
            if active and not stop_current_runs:
                raise JobConflict(
                    "There are active job runs. Override with stopCurrentJobRuns=true"
                )
            change = RunChange()
            for run in active:
                self._request_stop(job_id, run.id, "its job was deleted", change)
            self.records.delete_job(job_id, change)
            self._set_timer(job_id, None)
            await self._apply(change)
        self.mark_dirty((job_id,))
        return job

    async def add_schedule(self, job_id: str, schedule: ScheduleSpec) -> ScheduleSpec:
        async with self._lock:
            job = self._job(job_id)
            if job.schedule(schedule.id) is not None:
                raise JobConflict("Schedule with this id already exists")
            job = job.with_changes(schedules=(*job.schedules, schedule))
            marks = self.records.marks(job_id).with_schedule(schedule.id, self.clock.wall())
            await self._store_job(job, marks)
        return schedule

    async def update_schedule(self, job_id: str, schedule: ScheduleSpec) -> ScheduleSpec:
        async with self._lock:
            job = self._job(job_id)
            previous = job.schedule(schedule.id)
            if previous is None:
                raise ScheduleNotFound(schedule.id)
            job = job.with_changes(
                schedules=tuple(schedule if s.id == schedule.id else s for s in job.schedules)
            )
            marks = self.records.marks(job_id)
            # New times count from now: a changed or re-enabled schedule must not fire for
            # times that passed under its old definition.
            if (previous.cron, previous.timezone, previous.enabled) != (
                schedule.cron,
                schedule.timezone,
                True,
            ):
                marks = marks.with_schedule(schedule.id, self.clock.wall())
            await self._store_job(job, marks)
        return schedule

    async def delete_schedule(self, job_id: str, schedule_id: str) -> ScheduleSpec:
        async with self._lock:
            job = self._job(job_id)
            schedule = job.schedule(schedule_id)
            if schedule is None:
                raise ScheduleNotFound(schedule_id)
            job = job.with_changes(schedules=tuple(s for s in job.schedules if s is not schedule))
            marks = self.records.marks(job_id)
            remaining = {k: v for k, v in marks.schedules.items() if k != schedule_id}
            await self._store_job(job, marks.with_changes(schedules=remaining))
        return schedule

    async def start_run(self, job_id: str) -> JobRun:
        async with self._lock:
            change = RunChange()
            run = self._new_run(self._job(job_id), self.clock.wall(), change, Trigger.API)
            await self._apply(change)
        self.mark_dirty((job_id,))
        return run

    async def stop_run(self, job_id: str, run_id: str) -> JobRun:
        async with self._lock:
            self._job(job_id)
            run = self.records.run(job_id, run_id)
            if run is None:
                raise RunNotFound(job_id, run_id)
            change = RunChange()
            self._request_stop(job_id, run_id, "stopped", change)
            await self._apply(change)
        self.mark_dirty((job_id,))
        return self.records.run(job_id, run_id) or run

    def _job(self, job_id: str) -> Job:
        job = self.records.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _check_dependencies(self, job: Job) -> None:
        for index, parent in enumerate(job.spec.dependencies):
            if parent not in self.records.jobs and parent != job.id:
                raise JobInvalid(f"/dependencies({index})/id", f"Job {parent} does not exist")
        graph = {**self.records.dependency_graph(), job.id: job.spec.dependencies}
        cycle = find_cycle(graph)
        if cycle is not None:
            raise JobInvalid("/dependencies", "Dependency cycle: " + " -> ".join(cycle))

    async def _store_job(self, job: Job, marks: JobMarks) -> None:
        change = RunChange()
        self.records.put_job(job, change)
        self.records.put_marks(job.id, marks, change)
        await self._apply(change)
        self.mark_dirty((job.id,))


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class ScheduleNotFound(LookupError):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(schedule_id)
        self.schedule_id = schedule_id


class RunNotFound(LookupError):
    def __init__(self, job_id: str, run_id: str) -> None:
        super().__init__(run_id)
        self.job_id = job_id
        self.run_id = run_id


class JobConflict(Exception):
    """The change conflicts with what exists (409)."""


class JobInvalid(ValueError):
    """A job that is well-formed but not valid against the other jobs (422)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
