"""`tessera audit PATH`: who did what to a group, app or job folder, newest last."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from tessera.cli.apps import JsonOption, MasterOption
from tessera.cli.client import MasterClient, err, fail, print_json
from tessera.cli.render import out

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

PathArgument = Annotated[
    str, typer.Argument(help="A group or app path (/team-a covers /team-a/web, never /team-ab).")
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since", help="From this time on: 30m, 2h, 1d ago, an ISO 8601 time, or epoch seconds."
    ),
]
LimitOption = Annotated[int, typer.Option("--limit", min=1, help="The newest N records.")]


def since_value(raw: str | None, now: float) -> str | None:
    """What the API takes: relative times (`2h`) become epoch seconds, others pass as given."""
    if raw is None:
        return None
    relative = _RELATIVE.fullmatch(raw.strip())
    if relative:
        return f"{now - float(relative[1]) * _UNIT_SECONDS[relative[2]]:.3f}"
    return raw


def audit_line(record: dict[str, Any]) -> str:
    """`2026-12-06 14:02:11 alice scaled /team-a/web 3→10 (deployment d-…)`, local time."""
    moment = datetime.fromtimestamp(float(record["time"])).strftime("%Y-%m-%d %H:%M:%S")
    who = record.get("uid") or "anonymous"
    text = record.get("summary") or record.get("event", "")
    if record.get("decision") == "deny":
        text = f"DENIED {record.get('status') or ''} {text}".replace("  ", " ")
    elif (record.get("status") or 0) >= 400:
        text = f"{text} → {record['status']}"
    if record.get("source"):
        text += f" from {record['source']}"
    if record.get("deployment"):
        text += f" (deployment {record['deployment']})"
    if record.get("suppressed"):
        text += f" [{record['suppressed']} similar denials not recorded]"
    return f"{moment} {who} {text}"


def audit(
    path: PathArgument,
    since: SinceOption = None,
    limit: LimitOption = 100,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the audit log of a path: writes, denials, logins and token events."""
    if not path.startswith("/"):
        fail(f"{path!r}: a path starts with '/' (e.g. /team-a/web)")
    params: dict[str, str | int] = {"path": path, "limit": limit}
    since_param = since_value(since, time.time())
    if since_param is not None:
        params["since"] = since_param
    answer = MasterClient(master).get("/v1/audit", params=params)
    if json_output:
        print_json(answer)
        return
    for record in answer["records"]:
        out.print(audit_line(record), markup=False, highlight=False, soft_wrap=True)
    if not answer.get("verified", False):
        err.print(
            "[yellow]warning:[/yellow] the audit chain does not verify: "
            "stored records were changed or removed"
        )
