"""`tessera agent drain|reactivate` (maintenance of one agent) and `tessera rebalance`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.cli.apps import JsonOption, MasterOption
from tessera.cli.client import MasterClient, print_json
from tessera.cli.join_tokens import parse_duration
from tessera.cli.render import out


def _drain_lines(agent: dict[str, Any]) -> None:
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
        _drain_lines(data)


def agent_reactivate(
    agent_id: str, master: MasterOption = None, json_output: JsonOption = False
) -> None:
    """Put a drained (or draining) agent back in service."""
    data = MasterClient(master).post(f"/v1/agents/{agent_id}/reactivate", {})
    if json_output:
        print_json(data)
    else:
        _drain_lines(data)
