"""Metronome's v1 API: jobs, schedules, runs, history and the queue, served under `/v1`
and `/service/metronome/v1` (where DC/OS's Admin Router put it)."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse

from tessera.clock import Clock
from tessera.http_errors import ApiError, invalid
from tessera.master.api.metronome_models import JobIn, ScheduleIn, parse_body
from tessera.master.api.metronome_views import (
    EMBEDS,
    job_view,
    queue_view,
    run_view,
    schedule_view,
)
from tessera.master.auth import can_read_job
from tessera.master.controllers.jobs import (
    JobConflict,
    JobInvalid,
    JobNotFound,
    JobsController,
    RunNotFound,
    ScheduleNotFound,
)
from tessera.master.core import Master
from tessera.model.group import job_role
from tessera.model.job import JobSpec
from tessera.model.permissions import Rid, job_rid

router = APIRouter(prefix="/v1", tags=["jobs (Metronome v1)"])

EmbedQuery = Annotated[list[str] | None, Query()]
# Finished runs kept per job (each of successes and failures), as Metronome's history.
HISTORY_LIMIT_VARIABLE = "TESSERA_JOB_HISTORY_LIMIT"


def install(app: FastAPI, master: Master, clock: Clock | None = None) -> JobsController:
    """Add the jobs controller to the master and serve its API."""
    limit = int(os.environ.get(HISTORY_LIMIT_VARIABLE, "10"))
    controller = JobsController(master, clock=clock, history_limit=limit)
    master.add_component(controller)
    app.state.jobs = controller

    def job_owner(task_id: str) -> Rid | None:
        job_id = controller.records.job_of_task(task_id)
        return job_rid(job_id) if job_id is not None else None

    master.auth.task_owners.append(job_owner)
    app.include_router(router)
    app.include_router(router, prefix="/service/metronome")

    @app.get("/service/metronome/ping", response_class=PlainTextResponse)
    async def metronome_ping() -> str:
        return "pong"

    return controller


def _team_role(request: Request, spec: JobSpec) -> JobSpec:
    """A team's job (`team-a.*`, with `/team-a` enforcing its role) runs under the team's
    role and counts against its quota; it may not name another role (422 at /run/role)."""
    groups = request.app.state.services.state.groups
    role = job_role(spec.id, groups, spec.run.role)
    if spec.run.role not in ("*", role):
        raise invalid("/run/role", f"must be * or {role} for job {spec.id}")
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, role=role))


def _jobs(request: Request) -> JobsController:
    controller: JobsController = request.app.state.jobs
    return controller


def _embeds(values: list[str] | None) -> set[str]:
    wanted = {part.strip() for value in values or () for part in value.split(",") if part.strip()}
    unknown = wanted.difference(EMBEDS)
    if unknown:
        raise ApiError(400, f"Unknown embed {sorted(unknown)[0]!r}: use one of {', '.join(EMBEDS)}")
    return wanted


async def _call(awaitable: Any) -> Any:
    """Turn the controller's refusals into Metronome's answers."""
    try:
        return await awaitable
    except JobNotFound as error:
        raise ApiError(404, "Job not found", id=error.job_id) from None
    except ScheduleNotFound as error:
        raise ApiError(404, "Schedule not found", id=error.schedule_id) from None
    except RunNotFound as error:
        raise ApiError(404, "Job Run not found", jobSpec=error.job_id, id=error.run_id) from None
    except JobConflict as error:
        raise ApiError(409, str(error)) from None
    except JobInvalid as error:
        raise invalid(error.path, error.message) from None


def _job_or_404(controller: JobsController, job_id: str) -> Any:
    job = controller.records.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "Job not found", id=job_id)
    return job


# ---- jobs ------------------------------------------------------------------------------------


@router.get("/jobs")
async def list_jobs(request: Request, embed: EmbedQuery = None) -> list[dict[str, Any]]:
    controller = _jobs(request)
    wanted = _embeds(embed)
    jobs = sorted(controller.records.jobs.values(), key=lambda job: job.id)
    return [job_view(job, controller, wanted) for job in jobs if can_read_job(request, job.id)]


@router.post("/jobs", status_code=201)
async def create_job(request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    body = parse_body(await request.body(), JobIn)
    job = body.to_job()
    job = dataclasses.replace(job, spec=_team_role(request, job.spec))
    job = await _call(controller.create_job(job))
    return job_view(job, controller, {"schedules"} if job.schedules else set())


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request, embed: EmbedQuery = None) -> dict[str, Any]:
    controller = _jobs(request)
    wanted = _embeds(embed)
    return job_view(_job_or_404(controller, job_id), controller, wanted)


@router.put("/jobs/{job_id}")
async def update_job(job_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    _job_or_404(controller, job_id)
    # Metronome takes the ID from the path and keeps the job's schedules.
    body = parse_body(await request.body(), JobIn, {"id": job_id, "schedules": []})
    job = await _call(controller.update_job(_team_role(request, body.to_job().spec)))
    return job_view(job, controller)


@router.delete("/jobs/{job_id}")
async def delete_job(
    job_id: str,
    request: Request,
    stop_current: Annotated[bool, Query(alias="stopCurrentJobRuns")] = False,
) -> dict[str, Any]:
    controller = _jobs(request)
    job = await _call(controller.delete_job(job_id, stop_current))
    return job_view(job, controller)


# ---- schedules -------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/schedules")
async def list_schedules(job_id: str, request: Request) -> list[dict[str, Any]]:
    controller = _jobs(request)
    now = controller.clock.wall()
    return [schedule_view(s, now) for s in _job_or_404(controller, job_id).schedules]


@router.post("/jobs/{job_id}/schedules", status_code=201)
async def create_schedule(job_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    _job_or_404(controller, job_id)
    body = parse_body(await request.body(), ScheduleIn)
    schedule = await _call(controller.add_schedule(job_id, body.to_spec()))
    return schedule_view(schedule, controller.clock.wall())


@router.get("/jobs/{job_id}/schedules/{schedule_id}")
async def get_schedule(job_id: str, schedule_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    schedule = _job_or_404(controller, job_id).schedule(schedule_id)
    if schedule is None:
        raise ApiError(404, "Schedule not found", id=schedule_id)
    return schedule_view(schedule, controller.clock.wall())


@router.put("/jobs/{job_id}/schedules/{schedule_id}")
async def update_schedule(job_id: str, schedule_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    _job_or_404(controller, job_id)
    body = parse_body(await request.body(), ScheduleIn)
    if body.id != schedule_id:
        raise invalid("/id", f"must be equal to the schedule id in the path ({schedule_id})")
    schedule = await _call(controller.update_schedule(job_id, body.to_spec()))
    return schedule_view(schedule, controller.clock.wall())


@router.delete("/jobs/{job_id}/schedules/{schedule_id}")
async def delete_schedule(job_id: str, schedule_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    schedule = await _call(controller.delete_schedule(job_id, schedule_id))
    return schedule_view(schedule, controller.clock.wall())


# ---- runs ------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/runs")
async def list_runs(job_id: str, request: Request) -> list[dict[str, Any]]:
    """The job's active runs (finished ones are in its history)."""
    controller = _jobs(request)
    _job_or_404(controller, job_id)
    runs = sorted(controller.records.active_runs(job_id), key=lambda run: run.created_at)
    return [run_view(run, controller) for run in runs]


@router.post("/jobs/{job_id}/runs", status_code=201)
async def start_run(job_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    run = await _call(controller.start_run(job_id))
    return run_view(run, controller)


@router.get("/jobs/{job_id}/runs/{run_id}")
async def get_run(job_id: str, run_id: str, request: Request) -> dict[str, Any]:
    """An active run, or a finished one its job's history still lists."""
    controller = _jobs(request)
    run = controller.records.run(job_id, run_id)
    if run is None:
        raise ApiError(404, "Job Run not found", jobSpec=job_id, id=run_id)
    return run_view(run, controller)


@router.post("/jobs/{job_id}/runs/{run_id}/actions/stop")
async def stop_run(job_id: str, run_id: str, request: Request) -> dict[str, Any]:
    controller = _jobs(request)
    run = await _call(controller.stop_run(job_id, run_id))
    return run_view(run, controller)


@router.get("/queue")
async def queue(request: Request) -> list[dict[str, Any]]:
    entries = queue_view(_jobs(request))
    return [e for e in entries if can_read_job(request, str(e.get("jobId", "")))]
