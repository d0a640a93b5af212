"""`tessera deployment ...`: running deployments, watched live, rolled back or stopped."""

from __future__ import annotations

import json
import ssl
import threading
import time
from typing import Annotated, Any

import httpx
import typer
from rich.live import Live
from rich.table import Column, Table

from tessera.cli.apps import ForceOption, JsonOption, MasterOption
from tessera.cli.client import MasterClient, describe_error, err, fail, print_json
from tessera.cli.render import out

deployment_app = typer.Typer(
    help="Deployments: list, watch step by step, roll back.", no_args_is_help=True
)

_POLL_SECONDS = 0.5


def _progress(action: dict[str, Any], apps: dict[str, dict[str, Any]]) -> str:
    app = apps.get(action["app"])
    if app is None:
        return ""
    checked = bool(app.get("healthChecks"))
    ready = app["tasksHealthy"] if checked else app["tasksRunning"]
    return f"{ready}/{app['instances']} {'healthy' if checked else 'running'}"


def _table(deployments: list[dict[str, Any]], apps: dict[str, dict[str, Any]]) -> Table:
    """One row per step of each deployment: done, under way (with its apps' progress), or
    still to come."""
    table = Table("STEP", "ACTION", "APP", "PROGRESS")
    table.columns.insert(0, Column("DEPLOYMENT", no_wrap=True))
    for deployment in deployments:
        current = deployment["currentStep"]
        for number, step in enumerate(deployment["steps"], start=1):
            mark = "done" if number < current else "now" if number == current else "next"
            for index, action in enumerate(step["actions"]):
                table.add_row(
                    deployment["id"] if number == 1 and index == 0 else "",
                    f"{number}/{deployment['totalSteps']} {mark}" if index == 0 else "",
                    action["action"],
                    action["app"],
                    _progress(action, apps) if mark == "now" else "",
                )
    return table


@deployment_app.command("list")
def deployment_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Deployments in progress."""
    deployments = MasterClient(master).get("/v2/deployments")
    if json_output:
        print_json(deployments)
    elif not deployments:
        typer.echo("no deployment in progress")
    else:
        out.print(_table(deployments, {}))


class _Outcomes:
    """Listens to the event stream for how deployments end (success, or failure and why)."""

    def __init__(
        self, url: str, headers: dict[str, str], verify: ssl.SSLContext | bool = True
    ) -> None:
        self.url = url
        self.headers = headers
        self.verify = verify
        self.ended: dict[str, str] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        params = {"event_type": ["deployment_success", "deployment_failed"]}
        try:
            with (
                httpx.Client(
                    timeout=httpx.Timeout(10.0, read=None), headers=self.headers, verify=self.verify
                ) as http,
                http.stream("GET", f"{self.url}/v2/events", params=params) as stream,
            ):
                self.ready.set()
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        failed = event["eventType"] == "deployment_failed"
                        reason = event.get("reason") or "failed"
                        self.ended[event["id"]] = f"failed: {reason}" if failed else "succeeded"
        except httpx.HTTPError:
            self.ready.set()


@deployment_app.command("watch")
def deployment_watch(
    deployment_id: Annotated[
        str | None, typer.Argument(help="One deployment (default: all of them).")
    ] = None,
    master: MasterOption = None,
) -> None:
    """Follow deployments step by step until they end; exits 1 if one fails."""
    client = MasterClient(master)
    if deployment_id is None and not client.get("/v2/deployments"):
        typer.echo("no deployment in progress")
        return
    outcomes = _Outcomes(client.url, client.headers, client.verify)
    outcomes.ready.wait(5)
    watched: set[str] = set()
    failed = False
    with Live(_table([], {}), console=out, refresh_per_second=4) as live:
        while True:
            running = client.get("/v2/deployments")
            if deployment_id is not None:
                running = [d for d in running if d["id"] == deployment_id]
                if not running and not watched and deployment_id not in outcomes.ended:
                    fail(f"deployment {deployment_id} is not in progress")
            watched.update(d["id"] for d in running)
            affected = {a["app"] for d in running for a in d["currentActions"]}
            apps = {a["id"]: a for a in client.get("/v2/apps")["apps"] if a["id"] in affected}
            live.update(_table(running, apps))
            current = {d["id"] for d in running}
            for finished in sorted(watched - current):
                outcome = outcomes.ended.get(finished, "ended")
                failed = failed or outcome.startswith("failed")
                err.print(f"deployment {finished} {outcome}")
                watched.discard(finished)
            if not running and not watched:
                break
            time.sleep(_POLL_SECONDS)
    if failed:
        raise typer.Exit(1)


@deployment_app.command("rollback")
def deployment_rollback(
    deployment_id: str, master: MasterOption = None, force: ForceOption = False
) -> None:
    """Cancel a deployment and deploy the previous definitions back (--force: only stop
    it, leaving the instances as they are)."""
    client = MasterClient(master)
    params = {"force": "true"} if force else {}
    response = client.send("DELETE", f"/v2/deployments/{deployment_id}", params=params)
    if response.status_code == 202:
        typer.echo(f"stopped deployment {deployment_id}")
        return
    if response.status_code >= 400:
        fail(describe_error(response))
    result = response.json()
    typer.echo(f"rolling back: deployment {result['deploymentId']}")
