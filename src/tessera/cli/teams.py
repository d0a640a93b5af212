"""`tessera team ...`: a team in one command: its group, role, quota and IAM groups.

`tessera team create team-a --cpus 10 --mem 20480` creates, through the master's APIs,
the top-level Marathon group `/team-a` with `enforceRole` (its apps run under the role
`team-a`), the quota of that role, and the IAM groups `team-a-admins`, `-developers` and
`-viewers` with the grants of `model.permissions.team_groups`, in DC/OS's IAM shapes. Every
step tolerates what exists already, so running it again repairs a half-made team.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from tessera.cli.apps import JsonOption, MasterOption
from tessera.cli.client import MasterClient, describe_error, fail, print_json
from tessera.cli.quotas import (
    AppsOption,
    CpusOption,
    DiskOption,
    GpusOption,
    InstancesOption,
    MemOption,
    limits_body,
    quota_path,
)
from tessera.cli.render import out
from tessera.model.permissions import Grant, PathRefused, escaped_rid, team_groups

team_app = typer.Typer(
    help="Teams: a top-level group, its role and quota, and admin/developer/viewer groups.",
    no_args_is_help=True,
)

_ROLES = {"admins": "administrators", "developers": "developers", "viewers": "read-only users"}


def acl_path(rid: str) -> str:
    return "/acs/api/v1/acls/" + escaped_rid(rid)


def ensure(client: MasterClient, method: str, path: str, body: Any = None) -> bool:
    """Send a create; True if it created, False if it existed already (409). The client's
    own request() fails on any 4xx: here a 409 is fine, so the raw answer is read."""
    response = client.send(method, path, json=body)
    if response.status_code == 409:
        return False
    if response.status_code >= 400:
        fail(f"{method} {path}: {describe_error(response)}")
    return True


def _ensure_group(client: MasterClient, team: str) -> str:
    body = {"id": "/" + team, "enforceRole": True}
    if ensure(client, "POST", "/v2/groups", body):
        return f"created the group /{team} (enforceRole: its apps run under the role {team})"
    group = client.get(f"/v2/groups/{team}")
    if not group.get("enforceRole", False):
        return (
            f"the group /{team} exists WITHOUT enforceRole: its apps may run outside the "
            f"team's quota; update it with enforceRole true"
        )
    return f"the group /{team} exists and enforces its role"


def _ensure_quota(client: MasterClient, team: str, limits: dict[str, float]) -> str:
    if limits:
        client.request("PUT", quota_path(team), json=limits)
        shown = ", ".join(f"{name} {value:g}" for name, value in limits.items())
        return f"set the quota of role {team}: {shown}"
    response = client.send("GET", quota_path(team))
    if response.status_code == 404:
        client.request("PUT", quota_path(team), json={})
        return f"created an unlimited quota for role {team} (set limits with `tessera quota set`)"
    return f"kept the quota of role {team}"


def _ensure_iam_group(client: MasterClient, gid: str, grants: frozenset[Grant]) -> str:
    role = gid.rsplit("-", 1)[-1]
    team = gid.rsplit("-", 1)[0]
    created = ensure(
        client, "PUT", f"/acs/api/v1/groups/{gid}", {"description": f"{team} {_ROLES[role]}"}
    )
    for grant in sorted(grants, key=lambda g: str(g.rid)):
        rid = str(grant.rid)
        ensure(client, "PUT", acl_path(rid), {"description": f"{rid} (tessera team {team})"})
        for action in sorted(grant.actions):
            ensure(client, "PUT", f"{acl_path(rid)}/groups/{gid}/{action}")
    return f"{'created' if created else 'updated'} the IAM group {gid} ({len(grants)} grants)"


@team_app.command("create")
def team_create(
    name: str,
    cpus: CpusOption = None,
    mem: MemOption = None,
    disk: DiskOption = None,
    gpus: GpusOption = None,
    instances: InstancesOption = None,
    apps: AppsOption = None,
    master: MasterOption = None,
) -> None:
    """Create (or repair) a team: group /NAME, role and quota NAME, and its IAM groups."""
    try:
        groups = team_groups(name)
    except PathRefused as refused:
        fail(f"team {name!r}: {refused.reason}")
    client = MasterClient(master)
    out.print(_ensure_group(client, name))
    limits = limits_body(cpus, mem, disk, gpus, instances, apps)
    out.print(_ensure_quota(client, name, limits))
    for gid in sorted(groups):
        out.print(_ensure_iam_group(client, gid, groups[gid]))
    out.print(f"add people with: PUT /acs/api/v1/groups/{name}-developers/users/<uid>")


def teams(root: dict[str, Any], quotas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-level groups that enforce their role, with their quota (if any)."""
    by_role = {quota["role"]: quota for quota in quotas}
    found = []
    for group in root.get("groups", []):
        if not group.get("enforceRole"):
            continue
        team = str(group["id"]).strip("/")
        quota = by_role.get(team, {})
        found.append(
            {
                "team": team,
                "group": group["id"],
                "limits": quota.get("limits"),
                "consumed": quota.get("consumed"),
            }
        )
    return found


@team_app.command("list")
def team_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Teams: top-level groups that enforce their role, with their quota."""
    client = MasterClient(master)
    found = teams(client.get("/v2/groups"), client.get("/v1/quotas")["quotas"])
    if json_output:
        print_json(found)
        return
    table = Table("TEAM", "GROUP", "QUOTA (limits)", "CONSUMED")
    for team in found:
        limits = team["limits"]
        quota = "none" if limits is None else _brief(limits) or "unlimited"
        consumed = team["consumed"] or {}
        table.add_row(team["team"], team["group"], quota, _brief(consumed))
    out.print(table)


def _brief(values: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in values.items())
