"""`tessera app ...`: Marathon apps from JSON or YAML files, through the master's /v2 API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Column, Table

from tessera.cli.client import MasterClient, fail, print_json
from tessera.cli.render import out

app_app = typer.Typer(
    help="Long-running services (Marathon apps): add, list, scale, update, restart, remove.",
    no_args_is_help=True,
)

MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else local).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Go ahead even if a deployment is in the way.")
]
FileArgument = Annotated[
    str, typer.Argument(help="A Marathon JSON or YAML file (- reads standard input).")
]


def load_definition(path: str) -> Any:
    """A JSON or YAML document from a file or standard input; one clear line if it is bad."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    try:
        if path.endswith((".yaml", ".yml")):
            return yaml.safe_load(text)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return yaml.safe_load(text)  # YAML is a superset of JSON: better messages
    except yaml.YAMLError as error:
        fail(f"{path} is neither valid JSON nor valid YAML: {error}".replace("\n", " "))


def app_path(app_id: str) -> str:
    return "/" + app_id.strip("/")


def force_params(force: bool) -> dict[str, str]:
    return {"force": "true"} if force else {}


def said_deployment(result: dict[str, Any], what: str) -> None:
    deployment = result.get("deploymentId")
    suffix = f" (deployment {deployment}; follow it with `tessera deployment watch`)"
    typer.echo(f"{what}{suffix if deployment else ''}")


def _num(value: float) -> str:
    return f"{value:g}"


def apps_table(apps: list[dict[str, Any]]) -> None:
    table = Table("INSTANCES", "HEALTHY", "CPUS", "MEM", "DEPLOYMENT", "COMMAND")
    table.columns.insert(0, Column("ID", no_wrap=True))
    for app in apps:
        checked = bool(app.get("healthChecks"))
        healthy = f"{app['tasksHealthy']}/{app['instances']}" if checked else "-"
        running = f"{app['tasksRunning']}/{app['instances']}"
        command = app.get("cmd") or " ".join(app.get("args") or []) or "(container)"
        table.add_row(
            app["id"],
            running,
            healthy,
            _num(app["cpus"]),
            _num(app["mem"]),
            "yes" if app.get("deployments") else "-",
            command if len(command) <= 60 else command[:57] + "...",
        )
    out.print(table)


def app_details(app: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    strategy = app["upgradeStrategy"]
    rows = [
        ("id", app["id"]),
        ("command", app.get("cmd") or " ".join(app.get("args") or []) or "(container)"),
        ("instances", f"{app['tasksRunning']} running of {app['instances']}"),
        (
            "resources",
            f"cpus {_num(app['cpus'])}, mem {_num(app['mem'])} MiB, disk {_num(app['disk'])} "
            f"MiB, gpus {app['gpus']}",
        ),
        ("version", app["version"]),
        ("health checks", str(len(app.get("healthChecks") or []))),
        (
            "upgrade",
            f"minimumHealthCapacity {strategy['minimumHealthCapacity']}, "
            f"maximumOverCapacity {strategy['maximumOverCapacity']}",
        ),
        ("deployments", ", ".join(d["id"] for d in app.get("deployments") or []) or "-"),
    ]
    failure = app.get("lastTaskFailure")
    if failure:
        rows.append(("last failure", f"{failure['state']} {failure.get('message') or ''}"))
    for name, value in rows:
        table.add_row(f"[bold]{name}[/bold]", value)
    out.print(table)
    tasks = app.get("tasks") or []
    if tasks:
        listing = Table("STATE", "HOST", "PORTS", "HEALTHY", "STARTED")
        listing.columns.insert(0, Column("TASK", no_wrap=True))
        for task in tasks:
            results = task.get("healthCheckResults") or []
            healthy = "-" if not results else ("yes" if results[0]["alive"] else "no")
            listing.add_row(
                task["id"],
                task["state"],
                task.get("host") or "-",
                ",".join(str(p) for p in task.get("ports") or []) or "-",
                healthy,
                task.get("startedAt") or "-",
            )
        out.print(listing)


@app_app.command("add")
def app_add(file: FileArgument, master: MasterOption = None, force: ForceOption = False) -> None:
    """Create an app from a Marathon app definition."""
    definition = load_definition(file)
    client = MasterClient(master)
    created = client.request("POST", "/v2/apps", json=definition, params=force_params(force))
    deployments = created.get("deployments") or [{}]
    said_deployment(
        {"deploymentId": deployments[0].get("id")},
        f"created {created['id']} with {created['instances']} instances",
    )


@app_app.command("list")
def app_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """List apps with their running and healthy instances."""
    apps = MasterClient(master).get("/v2/apps")["apps"]
    if json_output:
        print_json(apps)
    else:
        apps_table(apps)


@app_app.command("show")
def app_show(app_id: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Show one app and its instances."""
    app = MasterClient(master).get(f"/v2/apps{app_path(app_id)}")["app"]
    if json_output:
        print_json(app)
    else:
        app_details(app)


@app_app.command("update")
def app_update(
    app_id: str, file: FileArgument, master: MasterOption = None, force: ForceOption = False
) -> None:
    """Change an app: the fields in the file replace the current ones (Marathon's PUT)."""
    definition = load_definition(file)
    client = MasterClient(master)
    result = client.request(
        "PUT", f"/v2/apps{app_path(app_id)}", json=definition, params=force_params(force)
    )
    said_deployment(result, f"updated {app_path(app_id)}")


@app_app.command("scale")
def app_scale(
    app_id: str,
    instances: Annotated[int, typer.Argument(min=0, help="How many instances to run.")],
    master: MasterOption = None,
    force: ForceOption = False,
) -> None:
    """Run this many instances."""
    client = MasterClient(master)
    result = client.request(
        "PUT",
        f"/v2/apps{app_path(app_id)}",
        json={"instances": instances},
        params=force_params(force),
    )
    said_deployment(result, f"scaling {app_path(app_id)} to {instances}")


@app_app.command("restart")
def app_restart(app_id: str, master: MasterOption = None, force: ForceOption = False) -> None:
    """Replace every instance, following the app's upgrade strategy."""
    client = MasterClient(master)
    result = client.request(
        "POST", f"/v2/apps{app_path(app_id)}/restart", params=force_params(force)
    )
    said_deployment(result, f"restarting {app_path(app_id)}")


@app_app.command("remove")
def app_remove(app_id: str, master: MasterOption = None, force: ForceOption = False) -> None:
    """Stop every instance and delete the app."""
    client = MasterClient(master)
    result = client.request("DELETE", f"/v2/apps{app_path(app_id)}", params=force_params(force))
    said_deployment(result, f"removing {app_path(app_id)}")


@app_app.command("versions")
def app_versions(
    app_id: str,
    version: Annotated[str | None, typer.Argument(help="Show this version.")] = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """List an app's versions, newest first (or print one of them)."""
    client = MasterClient(master)
    if version is not None:
        print_json(client.get(f"/v2/apps{app_path(app_id)}/versions/{version}"))
        return
    versions = client.get(f"/v2/apps{app_path(app_id)}/versions")["versions"]
    if json_output:
        print_json(versions)
    else:
        for entry in versions:
            typer.echo(entry)
