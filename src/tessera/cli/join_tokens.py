"""`tessera join-token create|list|revoke` and `tessera agent revoke`: letting agents in and out."""

from __future__ import annotations

import datetime
import re
from typing import Annotated

import typer

from tessera.cli.client import MasterClient, fail, print_json

join_token_app = typer.Typer(help="Join tokens: how new agents get into the cluster.")

MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else local).")
]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `7d` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r}: a duration looks like 90s, 15m, 1h or 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]


@join_token_app.command("create")
def create(
    ttl: Annotated[str, typer.Option(help="How long it is valid: 90s, 15m, 1h, 7d.")] = "1h",
    uses: Annotated[int, typer.Option(min=1, help="How many agents may join with it.")] = 1,
    hostname: Annotated[
        str | None, typer.Option(help="Admit only an agent announcing this host name.")
    ] = None,
    description: Annotated[str, typer.Option(help="A note shown by `list`.")] = "",
    master: MasterOption = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a join token; it is printed once, with the CA pin agents check."""
    body = {"ttl": parse_duration(ttl), "uses": uses, "description": description}
    if hostname:
        body["hostname"] = hostname
    data = MasterClient(master).post("/v1/join-tokens", body)
    if json_output:
        print_json(data)
        return
    typer.echo(f"token:  {data['token']}")
    typer.echo(f"ca pin: {data['caPin']}")
    typer.echo(
        f"join:   tessera agent --master URL --join-token {data['token']} --ca-pin {data['caPin']}",
        err=True,
    )


@join_token_app.command("list")
def list_tokens(
    master: MasterOption = None, json_output: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List join tokens (ids only: a token's secret is never shown again)."""
    tokens = MasterClient(master).get("/v1/join-tokens")["tokens"]
    if json_output:
        print_json(tokens)
        return
    typer.echo(f"{'ID':<18} {'USES LEFT':>9}  {'EXPIRES':<20} HOSTNAME  DESCRIPTION")
    for token in tokens:
        expires = datetime.datetime.fromtimestamp(token["expiresAt"]).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{token['id']:<18} {token['usesLeft']:>9}  {expires:<20} "
            f"{token.get('hostname') or '-'}  {token.get('description', '')}"
        )


@join_token_app.command("revoke")
def revoke(token_id: str, master: MasterOption = None) -> None:
    """Revoke a join token: no agent joins with it any more."""
    MasterClient(master).delete(f"/v1/join-tokens/{token_id}")
    typer.echo(f"join token {token_id} revoked")


def agent_revoke(agent_id: str, master: MasterOption = None) -> None:
    """Revoke an agent's certificates: it is disconnected and cannot reconnect."""
    if not agent_id:
        fail("an agent id is required")
    data = MasterClient(master).post(f"/v1/agents/{agent_id}/revoke", {})
    typer.echo(f"agent {agent_id}: {data['revoked']} certificates revoked, disconnected")
