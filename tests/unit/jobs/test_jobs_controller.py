"""The jobs controller in-process on a fake clock: schedules fire once, concurrency policies,
retries, dependencies, history, and recovery after a master restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tessera.master.config import MasterConfig
from tessera.master.controllers.jobs import JobsController
from tessera.master.core import Master
from tessera.model.job import (
    ConcurrencyPolicy,
    Job,
    JobRun,
    JobRunSpec,
    JobSpec,
    RestartPolicy,
    RunStatus,
    ScheduleSpec,
)
from tessera.model.task import TaskState
from tessera.store import MemoryStore, StateStore
from tessera.testing.clock import FakeClock

T0 = datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC).timestamp()


class Harness:
    def __init__(self, tmp_path: Path, store: StateStore, clock: FakeClock) -> None:
        self.clock = clock
        self.master = Master(MasterConfig(work_dir=tmp_path), store=store, clock=clock)
        self.jobs = JobsController(self.master, clock=clock, history_limit=5)
        self.master.add_component(self.jobs)
        self.stopped = False

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        # Let the planner finish the pass our submits woke: cancelling Planner.run while its
        # wait_for(event) completes at the same instant hangs on Python 3.11 (the kernel's
        # loop, reproduced without jobs: submit, then stop at once).
        await asyncio.sleep(0.05)
        await self.master.stop()

    async def settle(self) -> None:
        """Run passes until nothing is left to do at this instant."""
        for _ in range(20):
            await self.jobs.sync()
            if not self.jobs._dirty:
                return
        raise AssertionError("the controller never settled")

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.settle()

    async def task_state(self, task_id: str, state: TaskState, **changes: Any) -> None:
        """What an agent's status update would do to the task."""
        now = self.clock.wall()
        task = self.master.state.tasks[task_id]
        if state is TaskState.TASK_RUNNING:
            changes.setdefault("started_at", now)
        if state.terminal:
            changes.setdefault("finished_at", now)
        await self.master.state.save(tasks=[task.with_changes(state=state, **changes)])
        await self.settle()

    def runs(self, job_id: str) -> list[JobRun]:
        return sorted(self.jobs.records.active_runs(job_id), key=lambda r: r.created_at)

    def current(self, run: JobRun) -> str:
        latest = self.jobs.records.run(run.job_id, run.id)
        assert latest is not None and latest.current_task is not None
        return latest.current_task


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    made = Harness(tmp_path, MemoryStore(), FakeClock(wall=T0))
    await made.master.start()
    try:
        yield made
    finally:
        await made.stop()


def _job(job_id: str = "report", *schedules: ScheduleSpec, **run: Any) -> Job:
    spec = JobRunSpec(**{"cmd": "sleep 600", "cpus": 0.1, "mem": 32, **run})
    return Job(JobSpec(job_id, spec), schedules=schedules)


def _minutely(policy: ConcurrencyPolicy) -> ScheduleSpec:
    return ScheduleSpec("every-minute", "* * * * *", concurrency_policy=policy)


async def test_run_now_submits_one_task_recorded_first(harness: Harness) -> None:
    await harness.jobs.create_job(_job())
    run = await harness.jobs.start_run("report")
    await harness.settle()
    (active,) = harness.runs("report")
    assert active.status is RunStatus.STARTING
    task = harness.master.state.tasks[harness.current(run)]
    assert task.state is TaskState.TASK_QUEUED
    assert task.id.startswith(f"report_{run.id}.")
    assert task.spec.app_id == "report"
    stored = await harness.master.store.get("job_runs", f"report/{run.id}")
    assert stored is not None and stored["current_task"] == task.id


async def test_schedule_fires_once_per_minute_and_records_history(harness: Harness) -> None:
    await harness.jobs.create_job(_job("tick", _minutely(ConcurrencyPolicy.ALLOW), cmd="true"))
    await harness.advance(30)
    assert harness.runs("tick") == []
    await harness.advance(30)  # 10:01:05, the 10:01:00 time has passed
    (run,) = harness.runs("tick")
    assert run.scheduled_at == T0 + 55
    await harness.advance(1)
    assert len(harness.runs("tick")) == 1, "a scheduled time starts one run, never two"
    task_id = harness.current(run)
    await harness.task_state(task_id, TaskState.TASK_RUNNING)
    await harness.task_state(task_id, TaskState.TASK_FINISHED, exit_code=0)
    history = harness.jobs.records.history("tick")
    assert history.success_count == 1
    assert history.successful_runs[0].tasks == (task_id,)
    assert harness.jobs.records.run("tick", run.id) is not None  # still shown


async def test_allow_runs_side_by_side(harness: Harness) -> None:
    await harness.jobs.create_job(_job("long", _minutely(ConcurrencyPolicy.ALLOW)))
    await harness.advance(60)
    await harness.task_state(harness.current(harness.runs("long")[0]), TaskState.TASK_RUNNING)
    await harness.advance(60)
    assert len(harness.runs("long")) == 2


async def test_forbid_skips_while_a_run_is_active(harness: Harness) -> None:
    await harness.jobs.create_job(_job("long", _minutely(ConcurrencyPolicy.FORBID)))
    await harness.advance(60)
    (first,) = harness.runs("long")
    await harness.task_state(harness.current(first), TaskState.TASK_RUNNING)
    await harness.advance(60)
    assert [r.id for r in harness.runs("long")] == [first.id]
    history = harness.jobs.records.history("long")
    assert history.missed_count == 1 and "FORBID" in history.missed_runs[0].reason
    await harness.task_state(harness.current(first), TaskState.TASK_FINISHED)
    await harness.advance(60)
    assert len(harness.runs("long")) == 1 and harness.runs("long")[0].id != first.id


async def test_replace_stops_the_active_run_and_starts_a_new_one(harness: Harness) -> None:
    await harness.jobs.create_job(_job("long", _minutely(ConcurrencyPolicy.REPLACE)))
    await harness.advance(60)
    (first,) = harness.runs("long")
    first_task = harness.current(first)
    await harness.task_state(first_task, TaskState.TASK_RUNNING)
    await harness.advance(60)
    assert harness.master.state.tasks[first_task].state is TaskState.TASK_KILLING
    await harness.task_state(first_task, TaskState.TASK_KILLED)
    (second,) = harness.runs("long")
    assert second.id != first.id
    replaced = harness.jobs.records.run("long", first.id)
    assert replaced is not None and replaced.status is RunStatus.FAILED
    assert "replaced" in (replaced.message or "")


async def test_on_failure_retries_until_the_deadline(harness: Harness) -> None:
    job = _job("flaky", restart_policy=RestartPolicy.ON_FAILURE, active_deadline_seconds=5)
    await harness.jobs.create_job(job)
    run = await harness.jobs.start_run("flaky")
    await harness.settle()
    first = harness.current(run)
    await harness.task_state(first, TaskState.TASK_FAILED, exit_code=1)
    await harness.advance(1)  # the backoff has passed: a second task
    second = harness.current(run)
    assert second != first
    await harness.task_state(second, TaskState.TASK_FAILED, exit_code=1)
    await harness.advance(1.2)
    third = harness.current(run)
    await harness.advance(3)  # past the 5 s deadline
    await harness.task_state(third, TaskState.TASK_FAILED, exit_code=1)
    ended = harness.jobs.records.run("flaky", run.id)
    assert ended is not None and ended.status is RunStatus.FAILED
    assert ended.task_ids == (first, second, third)
    assert harness.jobs.records.history("flaky").failure_count == 1


async def test_stop_kills_the_task(harness: Harness) -> None:
    await harness.jobs.create_job(_job())
    run = await harness.jobs.start_run("report")
    await harness.settle()
    task_id = harness.current(run)
    await harness.jobs.stop_run("report", run.id)
    await harness.settle()
    assert harness.master.state.tasks[task_id].state is TaskState.TASK_KILLED  # was queued
    stopped = harness.jobs.records.run("report", run.id)
    assert stopped is not None and stopped.status is RunStatus.FAILED


async def test_launch_deadline_fails_an_unplaceable_run(harness: Harness) -> None:
    await harness.jobs.create_job(_job(max_launch_delay=30, cpus=1000))
    run = await harness.jobs.start_run("report")
    await harness.settle()
    await harness.advance(31)
    ended = harness.jobs.records.run("report", run.id)
    assert ended is not None and ended.status is RunStatus.FAILED
    assert "maxLaunchDelay" in (ended.message or "")


async def test_child_runs_after_every_parent_succeeded(harness: Harness) -> None:
    for parent in ("extract", "load"):
        await harness.jobs.create_job(_job(parent, cmd="true"))
    child = _job("report", cmd="true")
    await harness.jobs.create_job(
        child.with_changes(spec=JobSpec("report", child.spec.run, dependencies=("extract", "load")))
    )
    for parent in ("extract", "load"):
        run = await harness.jobs.start_run(parent)
        await harness.settle()
        assert harness.runs("report") == [], "waits for every parent"
        await harness.advance(1)
        await harness.task_state(harness.current(run), TaskState.TASK_FINISHED)
    (triggered,) = harness.runs("report")
    assert triggered.trigger.value == "dependency"
    await harness.advance(1)
    assert len(harness.runs("report")) == 1, "the same successes never trigger twice"


async def _restart(harness: Harness, tmp_path: Path, downtime: float) -> Harness:
    await harness.stop()
    harness.clock.advance(downtime)
    again = Harness(tmp_path, harness.master.store, harness.clock)
    await again.master.start()
    await again.settle()
    return again


async def test_restart_within_deadline_starts_the_missed_run_once(
    harness: Harness, tmp_path: Path
) -> None:
    schedule = ScheduleSpec("every-minute", "* * * * *", starting_deadline_seconds=30)
    await harness.jobs.create_job(_job("tick", schedule))
    # Down from 10:00:05 to 10:01:20: the 10:01:00 run is 20 s late, within 30 s.
    again = await _restart(harness, tmp_path, 75)
    try:
        (run,) = again.runs("tick")
        assert run.scheduled_at == T0 + 55 and run.created_at == T0 + 75
        third = await _restart(again, tmp_path, 1)
        assert len(third.runs("tick")) == 1, "never started twice across restarts"
    finally:
        await again.stop()
    await third.stop()


async def test_restart_past_deadline_records_missed(harness: Harness, tmp_path: Path) -> None:
    schedule = ScheduleSpec("every-minute", "* * * * *", starting_deadline_seconds=30)
    await harness.jobs.create_job(_job("tick", schedule))
    again = await _restart(harness, tmp_path, 100)  # 10:01:45: 45 s late
    assert again.runs("tick") == []
    history = again.jobs.records.history("tick")
    assert history.missed_count == 1
    assert history.missed_runs[0].scheduled_at == T0 + 55
    await again.advance(20)  # 10:02:05: the next time fires normally
    assert len(again.runs("tick")) == 1
    await again.stop()


async def test_run_recorded_but_not_submitted_is_submitted_after_restart(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.jobs.create_job(_job())
    submitted: list[str] = []
    original = harness.master.submit

    async def crash_before_submit(task_id: str, spec: Any) -> Any:
        submitted.append(task_id)
        raise RuntimeError("master died")

    harness.master.submit = crash_before_submit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await harness.jobs.start_run("report")
    harness.master.submit = original  # type: ignore[method-assign]
    again = await _restart(harness, tmp_path, 1)
    (run,) = again.runs("report")
    assert run.current_task == submitted[0]
    assert submitted[0] in again.master.state.tasks
    assert len(again.master.state.tasks) == 1
    await again.stop()


async def test_failed_commit_submits_nothing_and_is_undone(harness: Harness) -> None:
    await harness.jobs.create_job(_job())
    store = harness.master.store
    original = store.commit

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("disk full")

    store.commit = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await harness.jobs.start_run("report")
    store.commit = original  # type: ignore[method-assign]
    assert harness.jobs.records.active_runs("report") == []
    assert harness.master.state.tasks == {}
    await harness.settle()
    assert harness.master.state.tasks == {}
