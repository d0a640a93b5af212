"""`tessera run` and `tessera task ...`: one-off tasks, their state and their output.

Output comes straight from the task's agent, never through the master: the CLI first asks
the master for a sandbox grant (`POST /v1/tasks/{id}/sandbox-grant`, short-lived, for that
task on that agent) and shows it to the agent.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from tessera.cli.client import LOGIN_HINT, MasterClient, describe_error, err, fail, print_json
from tessera.cli.render import task_details, tasks_table

task_app = typer.Typer(help="List, inspect, read the logs of and kill tasks.", no_args_is_help=True)

MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else local).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

_POLL_SECONDS = 0.2
_FAILED_EXIT = 1


def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="CMD ARGS... (one argument: a shell line; none: the image's own)"),
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPU shares (Marathon units).")] = 0.1,
    mem: Annotated[float, typer.Option(help="Memory limit in MiB.")] = 32.0,
    disk: Annotated[float, typer.Option(help="Disk in MiB.")] = 0.0,
    name: Annotated[str, typer.Option(help="Task name; the ID starts with it.")] = "task",
    port: Annotated[
        list[str] | None, typer.Option(help="Ask for a host port: NAME or NAME:NUMBER.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    wait: Annotated[
        bool, typer.Option(help="Stream the output and exit with the task's exit code.")
    ] = False,
    image: Annotated[
        str | None, typer.Option(help="Run in a container of this image (e.g. busybox:1.36).")
    ] = None,
    force_pull: Annotated[
        bool, typer.Option(help="Pull the image again even if the agent has it.")
    ] = False,
    master: MasterOption = None,
) -> None:
    """Launch a one-off task and print its ID."""
    body: dict[str, Any] = {"name": name, "cpus": cpus, "mem": mem, "disk": disk}
    if not command and image is None:
        fail("give the command to run (or --image IMAGE to run the image's own)")
    if command and len(command) == 1:
        body["cmd"] = command[0]
    elif command:
        body["args"] = command
    if image is not None:
        # A shell line runs in the image's /bin/sh; ARGS go to its entrypoint (docker run's way).
        kind = "MESOS" if "cmd" in body else "DOCKER"
        docker = {"image": image, "forcePullImage": force_pull}
        body["container"] = {"type": kind, "docker": docker}
    body["env"] = dict(_pair(item, "=", "--env") for item in env or [])
    body["portDefinitions"] = [_port(item) for item in port or []]
    client = MasterClient(master)
    task = client.post("/v1/tasks", body)
    if not wait:
        typer.echo(task["id"])
        return
    err.print(f"[dim]task {task['id']}[/dim]")
    raise typer.Exit(_wait_and_stream(client, task["id"]))


def _pair(item: str, separator: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition(separator)
    if not sep or not key:
        fail(f"{flag} expects KEY{separator}VALUE, got {item!r}")
    return key, value


def _port(item: str) -> dict[str, Any]:
    name, _, number = item.partition(":")
    if number and not number.isdigit():
        fail(f"--port expects NAME or NAME:NUMBER, got {item!r}")
    return {"name": name, "port": int(number or 0)}


@dataclass(frozen=True)
class Sandbox:
    """Where a task's sandbox is and the grant that opens it."""

    task_id: str
    agent_url: str
    headers: dict[str, str]
    # Agents' certificates come from the cluster CA too.
    verify: ssl.SSLContext | bool = True


class NoSandbox(Exception):
    """The master gave no grant; the message says why, for the user."""


def sandbox_grant(client: MasterClient, task_id: str) -> Sandbox:
    """A grant from the master to read `task_id`'s sandbox on its agent, or NoSandbox."""
    try:
        response = client._send("POST", f"/v1/tasks/{task_id}/sandbox-grant")
    except httpx.HTTPError as error:
        raise NoSandbox(f"cannot talk to the master at {client.url}: {error}") from None
    if response.status_code == 403:
        raise NoSandbox(
            f"you may not read the sandbox of task {task_id} ({describe_error(response)})"
        )
    if response.status_code == 401:
        raise NoSandbox(f"{describe_error(response)}; {LOGIN_HINT}")
    if response.status_code >= 400:
        raise NoSandbox(describe_error(response))
    body = response.json()
    headers = {"Authorization": f"Bearer {body['grant']}"}
    return Sandbox(task_id, body["agentUrl"], headers, client.verify)


def _sandbox_or_fail(client: MasterClient, task_id: str) -> Sandbox:
    try:
        return sandbox_grant(client, task_id)
    except NoSandbox as why:
        fail(str(why))


def _wait_and_stream(client: MasterClient, task_id: str) -> int:
    task = _wait_until_started(client, task_id)
    if task.get("agentUrl") and task.get("agentId"):
        try:
            sandbox = sandbox_grant(client, task_id)
        except NoSandbox as why:
            err.print(f"[yellow]cannot stream the output: {why}[/yellow]")
        else:
            asyncio.run(_follow_both(sandbox))
    while task["state"] not in _TERMINAL:
        time.sleep(_POLL_SECONDS)
        task = client.get(f"/v1/tasks/{task_id}")
    if task["state"] == "TASK_FINISHED":
        return 0
    err.print(f"[red]{task['state']}[/red] {task.get('message') or ''}".rstrip())
    code = task.get("exitCode")
    return code if isinstance(code, int) and code > 0 else _FAILED_EXIT


_TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_GONE"}


def _wait_until_started(client: MasterClient, task_id: str) -> dict[str, Any]:
    said_queued = False
    while True:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}")
        if task["state"] not in ("TASK_QUEUED", "TASK_STAGING"):
            return task
        if task["state"] == "TASK_QUEUED" and task.get("queuedReasons") and not said_queued:
            reasons = ", ".join(f"{k} x{v}" for k, v in sorted(task["queuedReasons"].items()))
            err.print(f"[yellow]queued[/yellow]: no agent fits yet ({reasons})")
            said_queued = True
        time.sleep(_POLL_SECONDS)


async def _follow(sandbox: Sandbox, path: str, sink: Any, offset: int = 0) -> str | None:
    """Copy the file to `sink` until the task ends; the agent's refusal, if it refuses."""
    url = f"{sandbox.agent_url}/v1/sandboxes/{sandbox.task_id}/files/follow"
    params: dict[str, str | int] = {"path": path, "offset": offset}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=sandbox.verify) as http,
        http.stream("GET", url, params=params, headers=sandbox.headers) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            return f"agent at {sandbox.agent_url}: {describe_error(response)}"
        async for chunk in response.aiter_bytes():
            sink.write(chunk)
            sink.flush()
    return None


async def _follow_both(sandbox: Sandbox) -> None:
    try:
        refusals = await asyncio.gather(
            _follow(sandbox, "stdout", sys.stdout.buffer),
            _follow(sandbox, "stderr", sys.stderr.buffer),
        )
    except httpx.HTTPError as error:
        err.print(f"[yellow]lost the output stream from {sandbox.agent_url}: {error}[/yellow]")
        return
    for refusal in dict.fromkeys(r for r in refusals if r):
        err.print(f"[yellow]{refusal}[/yellow]")


@task_app.command("list")
def task_list(
    state: Annotated[list[str] | None, typer.Option(help="Only tasks in this state.")] = None,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """List tasks, oldest first."""
    params = [("state", s if s.startswith("TASK_") else f"TASK_{s.upper()}") for s in state or []]
    data = MasterClient(master).get("/v1/tasks", params=params)
    if json_output:
        print_json(data["tasks"])
    else:
        tasks_table(data["tasks"])


@task_app.command("show")
def task_show(task_id: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Show one task, including why it is still queued."""
    data = MasterClient(master).get(f"/v1/tasks/{task_id}")
    if json_output:
        print_json(data)
    else:
        task_details(data)


@task_app.command("kill")
def task_kill(task_id: str, master: MasterOption = None, json_output: JsonOption = False) -> None:
    """Kill a task: SIGTERM to its whole process tree, then SIGKILL after the grace period."""
    data = MasterClient(master).delete(f"/v1/tasks/{task_id}")
    if json_output:
        print_json(data)
    else:
        typer.echo(f"{data['id']}: {data['state']}")


@task_app.command("logs")
def task_logs(
    task_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output.")
    ] = False,
    stderr: Annotated[
        bool, typer.Option("--stderr", help="Read stderr instead of stdout.")
    ] = False,
    master: MasterOption = None,
) -> None:
    """Print a task's stdout (or stderr) from its sandbox (needs read on its sandbox:
    `dcos:mesos:agent:sandbox:app_id:<app path>`)."""
    client = MasterClient(master)
    sandbox = _sandbox_or_fail(client, task_id)
    path = "stderr" if stderr else "stdout"
    if follow:
        try:
            refused = asyncio.run(_follow(sandbox, path, sys.stdout.buffer))
        except httpx.HTTPError as error:
            fail(f"cannot read the logs from the agent at {sandbox.agent_url}: {error}")
        if refused:
            fail(refused)
        return
    offset = 0
    url = f"{sandbox.agent_url}/v1/sandboxes/{task_id}/files/read"
    with httpx.Client(timeout=10, verify=sandbox.verify) as http:
        while True:
            try:
                response = http.get(
                    url, params={"path": path, "offset": offset}, headers=sandbox.headers
                )
                if response.status_code == 401:
                    # A long read can outlive its grant (5 minutes): one fresh grant.
                    sandbox = _sandbox_or_fail(client, task_id)
                    response = http.get(
                        url, params={"path": path, "offset": offset}, headers=sandbox.headers
                    )
            except httpx.HTTPError as error:
                fail(f"cannot read the logs from the agent at {sandbox.agent_url}: {error}")
            if response.status_code >= 400:
                fail(f"agent at {sandbox.agent_url}: {describe_error(response)}")
            chunk = response.json()
            sys.stdout.write(chunk["data"])
            offset = chunk["nextOffset"]
            if offset >= chunk["size"] or not chunk["data"]:
                break
    sys.stdout.flush()
