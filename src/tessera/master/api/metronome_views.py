"""Metronome v1 JSON out: jobs (with embeds), schedules, runs, history and the queue.

Fields Tessera adds are written only when set, so that strict clients generated from
Metronome's schema (the `dcos-metronome` library rejects unknown fields) keep working.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from tessera.master.controllers.jobs import JobsController
from tessera.model.job import FinishedRun, Job, JobHistory, JobRun, JobRunSpec, ScheduleSpec
from tessera.model.task import TaskState
from tessera.reconcile.cron import next_run

EMBEDS = ("activeRuns", "schedules", "history", "historySummary")


def timestamp(moment: float | None) -> str | None:
    """Metronome's format: `2016-07-15T13:02:59.735+0000`."""
    if moment is None:
        return None
    text = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[:-3] + "+0000"


def run_spec_view(spec: JobRunSpec) -> dict[str, Any]:
    view: dict[str, Any] = {"cpus": spec.cpus, "mem": spec.mem, "disk": spec.disk}
    if spec.cmd is not None:
        view["cmd"] = spec.cmd
    if spec.args is not None:
        view["args"] = list(spec.args)
    if spec.user is not None:
        view["user"] = spec.user
    view["env"] = spec.env_json()
    if spec.secrets:
        view["secrets"] = spec.secrets_json()
    view["placement"] = {
        "constraints": [
            {"attribute": c.attribute, "operator": c.operator}
            | ({"value": c.value} if c.value is not None else {})
            for c in spec.constraints
        ]
    }
    view["artifacts"] = [
        {"uri": a.uri, "extract": a.extract, "executable": a.executable, "cache": a.cache}
        for a in spec.artifacts
    ]
    view["maxLaunchDelay"] = spec.max_launch_delay
    restart: dict[str, Any] = {"policy": spec.restart_policy.value}
    if spec.active_deadline_seconds is not None:
        restart["activeDeadlineSeconds"] = spec.active_deadline_seconds
    view["restart"] = restart
    if spec.docker is not None:
        view["docker"] = dict(spec.docker)
    if spec.ucr is not None:
        view["ucr"] = dict(spec.ucr)
    if spec.networks:
        view["networks"] = [dict(n) for n in spec.networks]
    if spec.task_kill_grace_seconds is not None:
        view["taskKillGracePeriodSeconds"] = spec.task_kill_grace_seconds
    if spec.gpus:
        view["gpus"] = spec.gpus
    if spec.role != "*":
        view["role"] = spec.role
    if spec.priority:
        view["priority"] = spec.priority
    return view


def schedule_view(schedule: ScheduleSpec, now: float) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "startingDeadlineSeconds": schedule.starting_deadline_seconds,
        "concurrencyPolicy": schedule.concurrency_policy.value,
        "enabled": schedule.enabled,
        "nextRunAt": timestamp(next_run(schedule.cron, schedule.timezone, now)),
    }


def run_view(run: JobRun, controller: JobsController) -> dict[str, Any]:
    tasks = []
    live = controller.master.state.tasks
    for recorded in run.tasks:
        task = live.get(recorded.id)
        status = task.state if task is not None else TaskState(recorded.status)
        if status is TaskState.TASK_QUEUED:
            continue  # Metronome lists a task once Mesos reported on it
        started = task.started_at or task.created_at if task is not None else recorded.started_at
        completed = task.finished_at if task is not None else recorded.completed_at
        tasks.append(
            {
                "id": recorded.id,
                "status": status.value,
                "startedAt": timestamp(started),
                "completedAt": timestamp(completed),
            }
        )
    return {
        "id": run.id,
        "jobId": run.job_id,
        "status": run.status.value,
        "createdAt": timestamp(run.created_at),
        "completedAt": timestamp(run.completed_at),
        "tasks": tasks,
    }


def _finished_view(run: FinishedRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "createdAt": timestamp(run.created_at),
        "finishedAt": timestamp(run.finished_at),
        "tasks": list(run.tasks),
    }


def history_summary_view(history: JobHistory) -> dict[str, Any]:
    return {
        "successCount": history.success_count,
        "failureCount": history.failure_count,
        "lastSuccessAt": timestamp(history.last_success_at),
        "lastFailureAt": timestamp(history.last_failure_at),
    }


def history_view(history: JobHistory) -> dict[str, Any]:
    return {
        **history_summary_view(history),
        "successfulFinishedRuns": [_finished_view(r) for r in history.successful_runs],
        "failedFinishedRuns": [_finished_view(r) for r in history.failed_runs],
        # Tessera's: scheduled times that passed without a run, and why.
        "missedCount": history.missed_count,
        "missedRuns": [
            {
                "scheduleId": m.schedule_id,
                "scheduledAt": timestamp(m.scheduled_at),
                "reason": m.reason,
            }
            for m in history.missed_runs
        ],
    }


def job_view(job: Job, controller: JobsController, embed: Collection[str] = ()) -> dict[str, Any]:
    spec = job.spec
    view: dict[str, Any] = {"id": spec.id}
    if spec.description is not None:
        view["description"] = spec.description
    view["labels"] = dict(spec.labels)
    if spec.dependencies:
        view["dependencies"] = [{"id": parent} for parent in spec.dependencies]
    view["run"] = run_spec_view(spec.run)
    if "schedules" in embed:
        now = controller.clock.wall()
        view["schedules"] = [schedule_view(s, now) for s in job.schedules]
    if "activeRuns" in embed:
        active = controller.records.active_runs(job.id)
        view["activeRuns"] = [run_view(run, controller) for run in active]
    if "history" in embed:
        view["history"] = history_view(controller.records.history(job.id))
    if "historySummary" in embed:
        view["historySummary"] = history_summary_view(controller.records.history(job.id))
    return view


def queue_view(controller: JobsController) -> list[dict[str, Any]]:
    """Runs waiting to be placed, with the placement engine's reasons (Tessera's addition
    to Metronome's `{jobId, runs: [{runId}]}`)."""
    waiting: dict[str, list[dict[str, Any]]] = {}
    tasks = controller.master.state.tasks
    for run in controller.records.all_active_runs():
        task = tasks.get(run.current_task) if run.current_task else None
        if task is not None and task.state is not TaskState.TASK_QUEUED:
            continue
        entry: dict[str, Any] = {"runId": run.id}
        if task is not None:
            entry["taskId"] = task.id
            entry["queuedReasons"] = dict(task.queued_reasons)
        elif run.next_attempt_at is not None:
            entry["retryAt"] = timestamp(run.next_attempt_at)
        waiting.setdefault(run.job_id, []).append(entry)
    return [{"jobId": job_id, "runs": runs} for job_id, runs in sorted(waiting.items())]
