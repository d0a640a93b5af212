"""`tessera group ...`: Marathon groups (trees of apps with dependencies) from JSON or YAML."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.tree import Tree

from tessera.cli.apps import (
    FileArgument,
    ForceOption,
    JsonOption,
    MasterOption,
    app_path,
    force_params,
    load_definition,
    said_deployment,
)
from tessera.cli.client import MasterClient, print_json
from tessera.cli.render import out

group_app = typer.Typer(
    help="Groups of apps: add, list, show, update, scale, remove.", no_args_is_help=True
)


def _tree(group: dict[str, Any], tree: Tree) -> None:
    for app in group.get("apps", []):
        deps = f" (after {', '.join(app['dependencies'])})" if app.get("dependencies") else ""
        tree.add(f"{app['id']}  {app['tasksRunning']}/{app['instances']} running{deps}")
    for sub in group.get("groups", []):
        deps = f" (after {', '.join(sub['dependencies'])})" if sub.get("dependencies") else ""
        _tree(sub, tree.add(f"[bold]{sub['id']}[/bold]{deps}"))


@group_app.command("add")
def group_add(file: FileArgument, master: MasterOption = None, force: ForceOption = False) -> None:
    """Create a group (and its apps and subgroups) from a Marathon group definition."""
    definition = load_definition(file)
    client = MasterClient(master)
    result = client.request("POST", "/v2/groups", json=definition, params=force_params(force))
    said_deployment(result, "created the group")


@group_app.command("list")
def group_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """The whole tree of groups and apps."""
    root = MasterClient(master).get("/v2/groups")
    if json_output:
        print_json(root)
        return
    tree = Tree("[bold]/[/bold]")
    _tree(root, tree)
    out.print(tree)


@group_app.command("show")
def group_show(group_id: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """One group and everything in it."""
    group = MasterClient(master).get(f"/v2/groups{app_path(group_id)}")
    if json_output:
        print_json(group)
        return
    tree = Tree(f"[bold]{group['id']}[/bold]")
    _tree(group, tree)
    out.print(tree)


@group_app.command("update")
def group_update(
    group_id: str, file: FileArgument, master: MasterOption = None, force: ForceOption = False
) -> None:
    """Replace a group: apps left out of the file are stopped and removed."""
    definition = load_definition(file)
    client = MasterClient(master)
    result = client.request(
        "PUT", f"/v2/groups{app_path(group_id)}", json=definition, params=force_params(force)
    )
    said_deployment(result, f"updated {app_path(group_id)}")


@group_app.command("scale")
def group_scale(
    group_id: str,
    factor: Annotated[float, typer.Argument(min=0, help="Multiply every app's instances.")],
    master: MasterOption = None,
    force: ForceOption = False,
) -> None:
    """Scale every app in the group by a factor."""
    client = MasterClient(master)
    result = client.request(
        "PUT",
        f"/v2/groups{app_path(group_id)}",
        json={"scaleBy": factor},
        params=force_params(force),
    )
    said_deployment(result, f"scaling {app_path(group_id)} by {factor:g}")


@group_app.command("remove")
def group_remove(group_id: str, master: MasterOption = None, force: ForceOption = False) -> None:
    """Stop and remove every app in the group, and the group."""
    client = MasterClient(master)
    result = client.request("DELETE", f"/v2/groups{app_path(group_id)}", params=force_params(force))
    said_deployment(result, f"removing {app_path(group_id)}")
