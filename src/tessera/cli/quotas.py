"""`tessera quota ...`: the limits of a role (a team) and what it consumes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tessera.cli.apps import JsonOption, MasterOption
from tessera.cli.client import MasterClient, print_json
from tessera.cli.render import out

quota_app = typer.Typer(
    help="Quotas per role: set, list, show, remove. Over-quota instances wait in the queue.",
    no_args_is_help=True,
)

CpusOption = Annotated[float | None, typer.Option("--cpus", min=0, help="Most cpus at once.")]
MemOption = Annotated[float | None, typer.Option("--mem", min=0, help="Most memory, MiB.")]
DiskOption = Annotated[float | None, typer.Option("--disk", min=0, help="Most disk, MiB.")]
GpusOption = Annotated[int | None, typer.Option("--gpus", min=0, help="Most gpus at once.")]
InstancesOption = Annotated[
    int | None, typer.Option("--instances", min=0, help="Most tasks running at once.")
]
AppsOption = Annotated[
    int | None, typer.Option("--apps", min=0, help="Most apps and jobs with tasks at once.")
]
LIMITS = ("cpus", "mem", "disk", "gpus", "instances", "apps")
WeightOption = Annotated[
    float | None,
    typer.Option("--weight", min=0.001, help="Weight in fair sharing when roles compete (1)."),
]


def limits_body(
    cpus: float | None,
    mem: float | None,
    disk: float | None,
    gpus: int | None,
    instances: int | None,
    apps: int | None,
    weight: float | None = None,
) -> dict[str, float]:
    """The body of `PUT /v1/quotas/{role}`: the limits given (the others are unlimited)."""
    given = {"cpus": cpus, "mem": mem, "disk": disk, "gpus": gpus}
    given |= {"instances": instances, "apps": apps, "weight": weight}
    return {name: value for name, value in given.items() if value is not None}


def quota_path(role: str) -> str:
    return f"/v1/quotas/{role}"


def _amount(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


def quotas_table(quotas: list[dict[str, Any]]) -> None:
    table = Table("ROLE", *(name.upper() for name in LIMITS), "WEIGHT")
    for quota in quotas:
        limits, consumed = quota.get("limits", {}), quota.get("consumed", {})
        cells = [f"{_amount(consumed.get(name))} / {_amount(limits.get(name))}" for name in LIMITS]
        table.add_row(quota["role"], *cells, _amount(quota.get("weight", 1.0)))
    out.print(table)
    out.print("consumed / limit; - is unlimited")


@quota_app.command("set")
def quota_set(
    role: str,
    cpus: CpusOption = None,
    mem: MemOption = None,
    disk: DiskOption = None,
    gpus: GpusOption = None,
    instances: InstancesOption = None,
    apps: AppsOption = None,
    weight: WeightOption = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Set a role's quota; limits not given are unlimited (it replaces the old quota)."""
    body = limits_body(cpus, mem, disk, gpus, instances, apps, weight)
    quota = MasterClient(master).request("PUT", quota_path(role), json=body)
    if json_output:
        print_json(quota)
        return
    quotas_table([quota])


@quota_app.command("list")
def quota_list(master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Every quota you may read, with what each role consumes."""
    quotas = MasterClient(master).get("/v1/quotas")["quotas"]
    if json_output:
        print_json(quotas)
        return
    quotas_table(quotas)


@quota_app.command("show")
def quota_show(role: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """One role's quota and consumption."""
    quota = MasterClient(master).get(quota_path(role))
    if json_output:
        print_json(quota)
        return
    quotas_table([quota])


@quota_app.command("remove")
def quota_remove(role: str, master: MasterOption = None) -> None:
    """Remove a role's quota: its instances are no longer limited."""
    MasterClient(master).delete(quota_path(role))
    out.print(f"removed the quota of role {role}")
