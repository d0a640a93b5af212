"""`tessera job ...`: Metronome jobs, their schedules, runs and history (like `dcos job`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Column, Table

from tessera.cli.client import MasterClient, err, fail, print_json
from tessera.cli.render import out
from tessera.cli.tasks import _wait_and_stream

job_app = typer.Typer(
    help="Jobs (Metronome's API): add, run, schedule, and read their history.",
    no_args_is_help=True,
)
schedule_app = typer.Typer(help="A job's cron schedules.", no_args_is_help=True)
job_app.add_typer(schedule_app, name="schedule")

MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else local).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
FileArgument = Annotated[Path, typer.Argument(help="A JSON or YAML file.")]
_POLL_SECONDS = 0.2
_FINISHED = ("SUCCESS", "FAILED")


def read_definition(path: Path) -> dict[str, Any]:
    """A JSON or YAML file holding one object (YAML reads JSON too)."""
    try:
        text = path.read_text()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        fail(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}")
    if not isinstance(data, dict):
        fail(f"{path} must hold one object (a job or a schedule)")
    return data


def _job_id(data: dict[str, Any], path: Path) -> str:
    job_id = data.get("id")
    if not isinstance(job_id, str):
        fail(f"{path} has no job id")
    return job_id


@job_app.command("add")
def job_add(file: FileArgument, master: MasterOption = None) -> None:
    """Create a job from a file (schedules in it are created too)."""
    data = read_definition(file)
    job = MasterClient(master).post("/v1/jobs", data)
    typer.echo(job["id"])


@job_app.command("update")
def job_update(file: FileArgument, master: MasterOption = None) -> None:
    """Replace a job's definition from a file (its schedules stay, as in Metronome)."""
    data = read_definition(file)
    data.pop("schedules", None)
    job = MasterClient(master).request("PUT", f"/v1/jobs/{_job_id(data, file)}", json=data)
    typer.echo(f"{job['id']}: updated")


@job_app.command("list")
def job_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """List jobs with their schedules, active runs and last results."""
    jobs = MasterClient(master).get(
        "/v1/jobs", params={"embed": "activeRuns,schedules,historySummary"}
    )
    if json_output:
        print_json(jobs)
        return
    table = Table(
        Column("ID", no_wrap=True), "ACTIVE RUNS", "SCHEDULE", "NEXT RUN", "SUCCESSES",
        "FAILURES", "LAST RESULT", "DESCRIPTION",
    )  # fmt: skip
    for job in jobs:
        schedules = [s for s in job["schedules"] if s["enabled"]]
        summary = job["historySummary"]
        table.add_row(
            job["id"],
            str(len(job["activeRuns"])),
            ", ".join(f"{s['cron']} {s['timezone']}" for s in schedules) or "-",
            min((s["nextRunAt"] for s in schedules), default="-"),
            str(summary["successCount"]),
            str(summary["failureCount"]),
            _last_result(summary),
            job.get("description") or "",
        )
    out.print(table)


def _last_result(summary: dict[str, Any]) -> str:
    success, failure = summary["lastSuccessAt"], summary["lastFailureAt"]
    if success is None and failure is None:
        return "-"
    if failure is None or (success is not None and success > failure):
        return f"SUCCESS {success}"
    return f"FAILED {failure}"


@job_app.command("show")
def job_show(job_id: str, master: MasterOption = None) -> None:
    """Show a job with its schedules, active runs and history summary (JSON)."""
    print_json(
        MasterClient(master).get(
            f"/v1/jobs/{job_id}", params={"embed": "activeRuns,schedules,historySummary"}
        )
    )


@job_app.command("remove")
def job_remove(
    job_id: str,
    stop_current_job_runs: Annotated[
        bool, typer.Option("--stop-current-job-runs", help="Stop its active runs too.")
    ] = False,
    master: MasterOption = None,
) -> None:
    """Delete a job, its schedules and its history."""
    params = {"stopCurrentJobRuns": str(stop_current_job_runs).lower()}
    MasterClient(master).request("DELETE", f"/v1/jobs/{job_id}", params=params)
    typer.echo(f"{job_id}: removed")


@job_app.command("run")
def job_run(
    job_id: str,
    wait: Annotated[
        bool, typer.Option(help="Stream the run's output and exit with its result.")
    ] = False,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start a run of a job now and print its run ID."""
    client = MasterClient(master)
    run = client.post(f"/v1/jobs/{job_id}/runs", None)
    if not wait:
        print_json(run) if json_output else typer.echo(run["id"])
        return
    err.print(f"[dim]run {run['id']} of {job_id}[/dim]")
    raise typer.Exit(_follow_run(client, job_id, run["id"]))


def _follow_run(client: MasterClient, job_id: str, run_id: str) -> int:
    """Stream each task of the run in turn (retries launch new ones) until it finishes:
    0 for SUCCESS, else the last task's exit code (1 if it has none)."""
    streamed: set[str] = set()
    code = 1
    while True:
        run = client.get(f"/v1/jobs/{job_id}/runs/{run_id}")
        pending = [t["id"] for t in run["tasks"] if t["id"] not in streamed]
        if not pending and run["status"] not in _FINISHED:
            pending = _queued_task(client, job_id, run_id, streamed)
        for task_id in pending:
            code = _wait_and_stream(client, task_id)
            streamed.add(task_id)
        if not pending and run["status"] in _FINISHED:
            if run["status"] == "SUCCESS":
                return 0
            err.print(f"[red]run {run_id} FAILED[/red]")
            return code or 1
        if not pending:
            time.sleep(_POLL_SECONDS)


def _queued_task(client: MasterClient, job_id: str, run_id: str, seen: set[str]) -> list[str]:
    for entry in client.get("/v1/queue"):
        if entry["jobId"] != job_id:
            continue
        for queued in entry["runs"]:
            task_id = queued.get("taskId")
            if queued["runId"] == run_id and task_id and task_id not in seen:
                return [task_id]
    return []


@job_app.command("kill")
def job_kill(
    job_id: str,
    run_id: Annotated[str | None, typer.Argument(help="The run to stop (else --all).")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Stop every active run.")] = False,
    master: MasterOption = None,
) -> None:
    """Stop a run of a job (its task is killed), or all of them."""
    client = MasterClient(master)
    if run_id is None and not all_runs:
        fail("give a RUN_ID or --all")
    run_ids = [run_id] if run_id else [r["id"] for r in client.get(f"/v1/jobs/{job_id}/runs")]
    for each in run_ids:
        client.post(f"/v1/jobs/{job_id}/runs/{each}/actions/stop", None)
        typer.echo(f"{job_id} run {each}: stopping")


@job_app.command("history")
def job_history(job_id: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Finished runs of a job, newest first, and its success and failure counts."""
    job = MasterClient(master).get(f"/v1/jobs/{job_id}", params={"embed": "history"})
    history = job["history"]
    if json_output:
        print_json(history)
        return
    out.print(
        f"{job_id}: {history['successCount']} successful, {history['failureCount']} failed, "
        f"{history.get('missedCount', 0)} missed scheduled runs"
    )
    table = Table(Column("RUN", no_wrap=True), "RESULT", "CREATED", "FINISHED", "TASKS")
    rows = [("SUCCESS", r) for r in history["successfulFinishedRuns"]]
    rows += [("FAILED", r) for r in history["failedFinishedRuns"]]
    for result, run in sorted(rows, key=lambda row: row[1]["finishedAt"], reverse=True):
        table.add_row(
            run["id"], result, run["createdAt"], run["finishedAt"], " ".join(run["tasks"])
        )
    out.print(table)


# ---- schedules -------------------------------------------------------------------------------


@schedule_app.command("add")
def schedule_add(job_id: str, file: FileArgument, master: MasterOption = None) -> None:
    """Add a schedule from a file: {"id", "cron", "timezone", "concurrencyPolicy", ...}."""
    schedule = MasterClient(master).post(f"/v1/jobs/{job_id}/schedules", read_definition(file))
    typer.echo(f"{job_id} schedule {schedule['id']}: next run at {schedule['nextRunAt']}")


@schedule_app.command("list")
def schedule_list(
    job_id: str, master: MasterOption = None, json_output: JsonOption = False
) -> None:
    """List a job's schedules and when each fires next."""
    schedules = MasterClient(master).get(f"/v1/jobs/{job_id}/schedules")
    if json_output:
        print_json(schedules)
        return
    table = Table(
        Column("ID", no_wrap=True), "CRON", "TIMEZONE", "ENABLED", "CONCURRENCY",
        "DEADLINE (s)", "NEXT RUN",
    )  # fmt: skip
    for s in schedules:
        table.add_row(
            s["id"], s["cron"], s["timezone"], str(s["enabled"]).lower(),
            s["concurrencyPolicy"], str(s["startingDeadlineSeconds"]), s["nextRunAt"],
        )  # fmt: skip
    out.print(table)


@schedule_app.command("update")
def schedule_update(job_id: str, file: FileArgument, master: MasterOption = None) -> None:
    """Replace a schedule (the id in the file names it)."""
    data = read_definition(file)
    schedule_id = data.get("id")
    if not isinstance(schedule_id, str):
        fail(f"{file} has no schedule id")
    path = f"/v1/jobs/{job_id}/schedules/{schedule_id}"
    schedule = MasterClient(master).request("PUT", path, json=data)
    typer.echo(f"{job_id} schedule {schedule['id']}: next run at {schedule['nextRunAt']}")


@schedule_app.command("remove")
def schedule_remove(job_id: str, schedule_id: str, master: MasterOption = None) -> None:
    """Delete a schedule."""
    MasterClient(master).request("DELETE", f"/v1/jobs/{job_id}/schedules/{schedule_id}")
    typer.echo(f"{job_id} schedule {schedule_id}: removed")
