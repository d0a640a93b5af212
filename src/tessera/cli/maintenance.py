"""`tessera agent drain|reactivate` (maintenance of one agent) and `tessera rebalance`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tessera.cli.apps import JsonOption, MasterOption
from tessera.cli.client import MasterClient, fail, print_json
from tessera.cli.join_tokens import parse_duration
from tessera.cli.render import out


def drain_lines(agent: dict[str, Any]) -> None:
    drain = agent.get("drain")
    out.print(f"agent {agent['id']} ({agent['hostname']}): {agent['state']}")
    if not drain:
        return
    deadline = drain.get("deadline") or "none (job runs and one-off tasks may run until they end)"
    out.print(f"  draining since {drain['startedAt']}, deadline {deadline}")
    if drain["remaining"] == 0:
        out.print("  nothing runs there any more")
        return
    out.print(f"  {drain['remaining']} tasks left:")
    for blocked in drain["blocked"]:
        owner = blocked.get("appId") or "-"
        out.print(f"    {blocked['taskId']} ({owner}): {blocked['reason']}", markup=False)


def agent_drain(
    agent_id: str,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="How long job runs and one-off tasks there may go on (90s, 15m, 1h); "
            "then they are killed. Service instances move away in any case."
        ),
    ] = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Take an agent out of service: no new work; its service instances move elsewhere
    within each app's upgradeStrategy; it shows DRAINING, then DRAINED."""
    body: dict[str, Any] = {}
    if deadline is not None:
        body["deadlineSeconds"] = parse_duration(deadline)
    data = MasterClient(master).post(f"/v1/agents/{agent_id}/drain", body)
    if json_output:
        print_json(data)
    else:
        drain_lines(data)


def agent_reactivate(
    agent_id: str, master: MasterOption = None, json_output: JsonOption = False
) -> None:
    """Put a drained (or draining) agent back in service."""
    data = MasterClient(master).post(f"/v1/agents/{agent_id}/reactivate", {})
    if json_output:
        print_json(data)
    else:
        drain_lines(data)


rebalance_app = typer.Typer(
    help="Free whole agents by moving instances (`tessera rebalance --dry-run` shows the plan).",
    invoke_without_command=True,
)


def _moves_table(moves: list[dict[str, str]]) -> None:
    table = Table("APP", "INSTANCE", "FROM", "TO")
    for move in moves:
        table.add_row(move["app"], move["instance"], move["from"], move["to"])
    out.print(table)


def _plan_lines(plan: dict[str, Any]) -> None:
    if plan.get("reason"):
        out.print(f"nothing to do: {plan['reason']}", markup=False)
        return
    out.print(
        f"agents in use {plan['agentsBefore']} -> {plan['agentsAfter']} "
        f"(lower bound {plan['lowerBound']}); {len(plan['moves'])} moves "
        f"(fewest possible for {len(plan['freed'])} agents: {plan['minimumMoves']}) "
        f"in {len(plan['waves'])} waves"
    )
    out.print("agents emptied: " + ", ".join(plan["freed"]))
    _moves_table(plan["moves"])


def _status_lines(rebalance: dict[str, Any]) -> None:
    out.print(
        f"{rebalance['id']}: {rebalance['status']}, wave {rebalance['wave']} of "
        f"{rebalance['waves']}, {rebalance['movesDone']} of {rebalance['moves']} moves done; "
        f"agents in use {rebalance['agentsBefore']} -> {rebalance['agentsAfter']} "
        f"(lower bound {rebalance['lowerBound']})"
    )
    if rebalance.get("message"):
        out.print(f"  {rebalance['message']}", markup=False)
    if rebalance["currentWave"]:
        _moves_table(rebalance["currentWave"])


@rebalance_app.callback()
def rebalance(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; move nothing.")
    ] = False,
    max_moves: Annotated[
        int | None, typer.Option("--max-moves", help="At most this many moves.")
    ] = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Plan which agents to empty and move their instances there, wave by wave, within each
    app's upgradeStrategy. `tessera rebalance status` follows it, `cancel` stops it."""
    if ctx.invoked_subcommand is not None:
        return
    if max_moves is not None and max_moves < 0:
        fail(f"--max-moves: must be >= 0, got {max_moves}")
    body: dict[str, Any] = {"dryRun": dry_run}
    if max_moves is not None:
        body["maxMoves"] = max_moves
    data = MasterClient(master).post("/v1/rebalance", body)
    if json_output:
        print_json(data)
    elif dry_run or data.get("id") is None:
        _plan_lines(data)
    else:
        _plan_lines({**data, "moves": [m for wave in data["plan"] for m in wave]})
        out.print(f"started {data['id']}: `tessera rebalance status {data['id']}` follows it")


@rebalance_app.command("status")
def rebalance_status(
    rebalance_id: Annotated[str | None, typer.Argument(help="Default: the latest.")] = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a rebalance's progress (the running or latest one by default)."""
    client = MasterClient(master)
    if rebalance_id is None:
        found = client.get("/v1/rebalance")["rebalances"]
        if not found:
            fail("no rebalance has run yet")
        data = found[0]
    else:
        data = client.get(f"/v1/rebalance/{rebalance_id}")
    if json_output:
        print_json(data)
    else:
        _status_lines(data)


@rebalance_app.command("cancel")
def rebalance_cancel(rebalance_id: str, master: MasterOption = None) -> None:
    """Stop a rebalance after its current wave; the agents it was emptying return."""
    data = MasterClient(master).delete(f"/v1/rebalance/{rebalance_id}")
    _status_lines(data)
