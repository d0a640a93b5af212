"""Tables for people; `--json` prints the API's own data instead."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Column, Table

# Piped output is read by scripts and greps: wide enough that no ID is ever cut.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _num(value: float) -> str:
    return f"{value:g}"


def agents_table(agents: list[dict[str, Any]]) -> None:
    table = Table("HOSTNAME", "STATE", "CPUS", "MEM (MiB)", "TASKS", "ATTRIBUTES")
    table.columns.insert(0, Column("ID", no_wrap=True))
    for agent in agents:
        total, used = agent["resources"], agent["allocated"]
        attributes = ";".join(f"{k}:{v}" for k, v in sorted(agent["attributes"].items()))
        table.add_row(
            agent["id"],
            agent["hostname"],
            agent["state"],
            f"{_num(used['cpus'])}/{_num(total['cpus'])}",
            f"{_num(used['mem'])}/{_num(total['mem'])}",
            str(agent["tasks"]),
            attributes,
        )
    out.print(table)


def _why(task: dict[str, Any]) -> str:
    if task["state"] == "TASK_QUEUED":
        reasons = task.get("queuedReasons") or {}
        if not reasons:
            return "waiting for placement"
        return "no agent fits: " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
    if task["state"] == "TASK_FINISHED":
        return ""
    return task.get("message") or task.get("reason") or ""


def tasks_table(tasks: list[dict[str, Any]]) -> None:
    table = Table("STATE", "HOST", "PORTS", "CPUS", "MEM", "EXIT", "WHY")
    table.columns.insert(0, Column("ID", no_wrap=True))
    for task in tasks:
        exit_code = task.get("exitCode")
        table.add_row(
            task["id"],
            task["state"],
            task.get("host") or "-",
            ",".join(str(p) for p in task.get("ports", [])) or "-",
            _num(task["cpus"]),
            _num(task["mem"]),
            "-" if exit_code is None else str(exit_code),
            _why(task),
        )
    out.print(table)


def task_details(task: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    command = task["cmd"] if task.get("cmd") is not None else " ".join(task.get("args") or [])
    rows = [
        ("id", task["id"]),
        ("state", task["state"]),
        ("command", command),
        (
            "resources",
            f"cpus {_num(task['cpus'])}, mem {_num(task['mem'])} MiB, "
            f"disk {_num(task['disk'])} MiB, gpus {task['gpus']}",
        ),
        ("agent", task.get("agentId") or "-"),
        ("host", task.get("host") or "-"),
        ("ports", ",".join(str(p) for p in task.get("ports", [])) or "-"),
        ("created", task.get("createdAt") or "-"),
        ("started", task.get("startedAt") or "-"),
        ("finished", task.get("finishedAt") or "-"),
        ("exit code", "-" if task.get("exitCode") is None else str(task["exitCode"])),
        ("reason", task.get("reason") or "-"),
        ("message", _why(task) or "-"),
    ]
    for name, value in rows:
        table.add_row(f"[bold]{name}[/bold]", value)
    out.print(table)
