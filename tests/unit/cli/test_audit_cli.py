"""`tessera audit PATH`: one line per record, relative --since, a warning when unverified."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tessera.cli import audit as audit_cli
from tessera.cli.audit import audit_line, since_value

WHEN = datetime(2026, 12, 6, 14, 2, 11).timestamp()  # local time, as the CLI prints it


def test_audit_line() -> None:
    record = {
        "time": WHEN,
        "uid": "alice",
        "summary": "scaled /team-a/web 3→10",
        "decision": "allow",
        "status": 200,
        "deployment": "d-42",
    }
    assert (
        audit_line(record) == "2026-12-06 14:02:11 alice scaled /team-a/web 3→10 (deployment d-42)"
    )
    denied = {"time": WHEN, "uid": None, "summary": "GET /v2/apps/{app_id:path} on /team-b/web",
              "decision": "deny", "status": 401, "source": "10.0.0.9", "suppressed": 4}  # fmt: skip
    assert audit_line(denied) == (
        "2026-12-06 14:02:11 anonymous DENIED 401 GET /v2/apps/{app_id:path} on /team-b/web "
        "from 10.0.0.9 [4 similar denials not recorded]"
    )


def test_since_value() -> None:
    assert since_value(None, 1000.0) is None
    assert since_value("2h", 10_000.0) == "2800.000"
    assert since_value("30m", 10_000.0) == "8200.000"
    assert since_value("2026-12-06T14:00:00Z", 0.0) == "2026-12-06T14:00:00Z"


def test_command(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}

    class FakeClient:
        def __init__(self, master: str | None) -> None:
            pass

        def get(self, path: str, **kwargs: Any) -> Any:
            asked.update(path=path, **kwargs)
            return {
                "records": [{"time": WHEN, "uid": "alice", "summary": "created /team-a/web"}],
                "verified": False,
            }

    monkeypatch.setattr(audit_cli, "MasterClient", FakeClient)
    app = typer.Typer()
    app.command()(audit_cli.audit)
    result = CliRunner().invoke(app, ["/team-a", "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "2026-12-06 14:02:11 alice created /team-a/web" in result.output
    assert "does not verify" in result.output
    assert asked == {"path": "/v1/audit", "params": {"path": "/team-a", "limit": 5}}
    assert CliRunner().invoke(app, ["team-a"]).exit_code == 1
