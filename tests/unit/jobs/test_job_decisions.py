"""Pure job decisions: missed runs and starting deadlines, concurrency, run steps, retries,
dependencies, cycles and history, all with `now` given."""

from __future__ import annotations

from datetime import UTC, datetime

from tessera.model.job import (
    ConcurrencyPolicy,
    JobConstraint,
    JobHistory,
    JobRun,
    JobRunSpec,
    RestartPolicy,
    RunStatus,
    ScheduleSpec,
)
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.reconcile.jobs import (
    advance_run,
    concurrency_decision,
    dependency_trigger,
    find_cycle,
    job_task_id,
    record_finished,
    retry_at,
    schedule_decision,
    task_spec_for,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC).timestamp()
EVERY_MINUTE = ScheduleSpec("every-minute", "* * * * *", starting_deadline_seconds=30)


def _run(**changes: object) -> JobRun:
    run = JobRun(
        id="20240501100000abcde",
        job_id="nightly.report",
        spec=JobRunSpec(cmd="true", cpus=0.1, mem=32),
        status=RunStatus.INITIAL,
        created_at=T0,
    )
    return run.with_changes(**changes)


def _task(task_id: str, state: TaskState, **changes: object) -> Task:
    task = Task(task_id, TaskSpec(name="x", cmd="true"), state, created_at=T0, updated_at=T0)
    return task.with_changes(**changes)


# ---- schedules ---------------------------------------------------------------------------


def test_schedule_waits_until_due() -> None:
    decision = schedule_decision(EVERY_MINUTE, mark=T0, now=T0 + 30)
    assert decision.fire_at is None and decision.next_due == T0 + 60
    assert decision.mark == T0


def test_schedule_fires_once_at_its_time() -> None:
    decision = schedule_decision(EVERY_MINUTE, mark=T0, now=T0 + 60.2)
    assert decision.fire_at == T0 + 60
    assert decision.missed_count == 0
    assert decision.mark == T0 + 60
    assert decision.next_due == T0 + 120
    again = schedule_decision(EVERY_MINUTE, mark=decision.mark, now=T0 + 61)
    assert again.fire_at is None, "a handled time never fires twice"


def test_recovery_within_deadline_starts_latest_and_misses_the_rest() -> None:
    # Down from T0 to T0+200: fire times 60, 120, 180; 180 is 20 s old (deadline 30 s).
    decision = schedule_decision(EVERY_MINUTE, mark=T0, now=T0 + 200)
    assert decision.fire_at == T0 + 180
    assert decision.missed == (T0 + 60, T0 + 120)
    assert decision.missed_count == 2
    assert decision.mark == T0 + 180


def test_recovery_past_deadline_records_every_time_as_missed() -> None:
    decision = schedule_decision(EVERY_MINUTE, mark=T0, now=T0 + 230)
    assert decision.fire_at is None
    assert decision.missed_count == 3
    assert decision.mark == T0 + 180
    assert decision.next_due == T0 + 240


def test_long_outage_counts_all_missed_but_lists_a_few() -> None:
    decision = schedule_decision(EVERY_MINUTE, mark=T0, now=T0 + 7 * 86400 + 10)
    assert decision.missed_count == 7 * 1440 - 1
    assert len(decision.missed) == 20
    assert decision.fire_at == T0 + 7 * 86400


def test_concurrency_policies() -> None:
    assert concurrency_decision(ConcurrencyPolicy.FORBID, []).start
    assert concurrency_decision(ConcurrencyPolicy.ALLOW, ["a"]).start
    forbid = concurrency_decision(ConcurrencyPolicy.FORBID, ["a"])
    assert not forbid.start and forbid.reason is not None and "a" in forbid.reason
    replace = concurrency_decision(ConcurrencyPolicy.REPLACE, ["a", "b"])
    assert replace.start and replace.stop == ("a", "b")


# ---- runs --------------------------------------------------------------------------------


def test_new_run_records_its_task_before_submitting() -> None:
    step = advance_run(_run(), None, T0, "t1")
    assert step.submit == "t1"
    assert step.run.current_task == "t1" and step.run.status is RunStatus.INITIAL
    assert step.run.task_ids == ("t1",)
    # The master stopped before submitting: the same task is submitted, not a new one.
    again = advance_run(step.run, None, T0 + 5, "t2")
    assert again.submit == "t1" and again.run.task_ids == ("t1",)


def test_run_follows_its_task_to_success() -> None:
    run = advance_run(_run(), None, T0, "t1").run
    starting = advance_run(run, _task("t1", TaskState.TASK_QUEUED), T0 + 1, "x")
    assert starting.run.status is RunStatus.STARTING
    assert starting.wake_at == T0 + 3600  # maxLaunchDelay
    active = advance_run(starting.run, _task("t1", TaskState.TASK_RUNNING), T0 + 2, "x")
    assert active.run.status is RunStatus.ACTIVE
    done = advance_run(active.run, _task("t1", TaskState.TASK_FINISHED, exit_code=0), T0 + 3, "x")
    assert done.run.status is RunStatus.SUCCESS and done.run.completed_at == T0 + 3
    assert done.run.tasks[0].status == "TASK_FINISHED"


def test_never_policy_fails_on_first_failure() -> None:
    run = advance_run(_run(), None, T0, "t1").run
    failed = advance_run(run, _task("t1", TaskState.TASK_FAILED, exit_code=3), T0 + 1, "t2")
    assert failed.run.status is RunStatus.FAILED
    assert failed.submit is None


def test_on_failure_retries_with_backoff_until_active_deadline() -> None:
    spec = JobRunSpec(
        cmd="false", restart_policy=RestartPolicy.ON_FAILURE, active_deadline_seconds=10
    )
    run = advance_run(_run(spec=spec), None, T0, "t1").run
    waiting = advance_run(run, _task("t1", TaskState.TASK_FAILED), T0 + 1, "t2")
    assert waiting.run.current_task is None and waiting.wake_at == T0 + 2
    assert waiting.run.status is not RunStatus.FAILED
    early = advance_run(waiting.run, None, T0 + 1.5, "t2")
    assert early.submit is None and early.wake_at == T0 + 2
    retried = advance_run(waiting.run, None, T0 + 2, "t2")
    assert retried.submit == "t2" and retried.run.task_ids == ("t1", "t2")
    # A failure after the deadline (10 s after the run was created) ends the run.
    late = advance_run(retried.run, _task("t2", TaskState.TASK_FAILED), T0 + 9.5, "t3")
    assert late.run.status is RunStatus.FAILED
    assert retry_at(_run(), T0) is None  # NEVER


def test_launch_deadline_fails_a_run_that_never_started() -> None:
    spec = JobRunSpec(cmd="true", max_launch_delay=60)
    run = advance_run(_run(spec=spec), None, T0, "t1").run
    step = advance_run(run, _task("t1", TaskState.TASK_QUEUED), T0 + 61, "x")
    assert step.run.status is RunStatus.FAILED and step.kill == "t1"
    assert "maxLaunchDelay" in (step.run.message or "")


def test_stop_kills_then_fails() -> None:
    run = advance_run(_run(), None, T0, "t1").run.with_changes(stop_requested=True)
    step = advance_run(run, _task("t1", TaskState.TASK_RUNNING), T0 + 1, "x")
    assert step.kill == "t1" and not step.run.status.finished
    killing = advance_run(run, _task("t1", TaskState.TASK_KILLING), T0 + 1, "x")
    assert killing.kill is None
    ended = advance_run(run, _task("t1", TaskState.TASK_KILLED), T0 + 2, "x")
    assert ended.run.status is RunStatus.FAILED and ended.kill is None


def test_task_ids_and_spec_follow_metronome() -> None:
    task_id = job_task_id("prod.example.app", "20160715130259A34HX", "u-1")
    assert task_id == "prod_example_app_20160715130259A34HX.u-1"
    spec = JobRunSpec(
        cmd="echo hi",
        constraints=(
            JobConstraint("rack", "EQ", "r1"),
            JobConstraint("@hostname", "LIKE", "a.*"),
        ),
        task_kill_grace_seconds=7,
    )
    task_spec = task_spec_for(_run(spec=spec))
    assert task_spec.constraints == (("rack", "IS", "r1"), ("@hostname", "LIKE", "a.*"))
    assert task_spec.app_id == "nightly.report" and task_spec.kill_grace_seconds == 7


# ---- dependencies, cycles, history -------------------------------------------------------


def test_dependency_trigger_waits_for_every_parent_success() -> None:
    ok = JobHistory(success_count=1, last_success_at=T0 + 10)
    failed_after = JobHistory(last_success_at=T0 + 10, last_failure_at=T0 + 20)
    assert dependency_trigger({"a": ok, "b": None}, since=T0) is None
    assert dependency_trigger({"a": ok, "b": failed_after}, since=T0) is None
    later = JobHistory(last_success_at=T0 + 30)
    assert dependency_trigger({"a": ok, "b": later}, since=T0) == T0 + 30
    # Once triggered by those successes, the same successes never trigger again.
    assert dependency_trigger({"a": ok, "b": later}, since=T0 + 30) is None


def test_find_cycle() -> None:
    assert find_cycle({"a": ("b",), "b": ("c",), "c": ()}) is None
    assert find_cycle({"a": ("b",), "b": ("c",), "c": ("a",)}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ("a",)}) == ["a", "a"]
    assert find_cycle({"x": ("y", "z"), "y": ("z",), "z": ()}) is None


def test_history_keeps_the_newest_up_to_the_limit() -> None:
    history = JobHistory()
    for index in range(5):
        run = _run(id=f"r{index}", status=RunStatus.SUCCESS, completed_at=T0 + index)
        history = record_finished(history, run, limit=3)
    assert history.success_count == 5
    assert [r.id for r in history.successful_runs] == ["r4", "r3", "r2"]
    assert history.last_success_at == T0 + 4
