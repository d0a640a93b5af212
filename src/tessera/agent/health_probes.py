"""One probe of a task: an HTTP(S) request, a TCP connect, or a shell command, with a timeout.

Probes run from the agent, on the task's host: HTTP and TCP go to 127.0.0.1 (::1 for IPv6)
as Mesos' checkers do, so a task that binds only to loopback is still reachable. A COMMAND
probe runs `/bin/sh -c <command>` in the task's sandbox with the task's environment, as the
task's user (through `setpriv` when the agent is root, exactly as the task itself is
started), in a session of its own that is killed whole on timeout. It runs beside the task,
not inside the task's cgroup: its CPU and memory are not counted against the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.agent.exec_spawn import (
    ROOT_WRAPPER_ENV,
    RunAs,
    SwitchTools,
    command_line,
    current_user,
    lookup_user,
    task_environment,
)
from tessera.agent.exec_types import LaunchFailed, LaunchSpec

# How much of a command probe's output is kept for the status message.
OUTPUT_TAIL = 512


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """`ok` None: the answer counts neither way (an HTTP 1xx with ignoreHttp1xx)."""

    ok: bool | None
    detail: str


def loopback(ip_protocol: str = "IPv4") -> str:
    return "::1" if ip_protocol == "IPv6" else "127.0.0.1"


async def probe_http(
    url: HttpTarget,
    timeout: float | None,
    healthy_statuses: range | frozenset[int] = range(200, 400),
    ignore_1xx: bool = False,
) -> ProbeResult:
    """GET the target: healthy when the status is in `healthy_statuses` (Mesos: 200 to 399).

    Only the status line matters, so this reads that and hangs up: a plain HTTP/1.1 request
    on a fresh connection, certificates not verified for HTTPS (as in Mesos). Interim 1xx
    answers are skipped, or, with `ignore_1xx`, make the probe count neither way.
    """
    try:
        async with asyncio.timeout(timeout):
            status = await _status_of(url, ignore_1xx)
    except TimeoutError:
        return ProbeResult(False, f"GET {url}: timed out after {timeout:g}s")
    except (OSError, ValueError) as error:
        return ProbeResult(False, f"GET {url}: {_describe(error)}")
    if 100 <= status < 200:
        return ProbeResult(None, f"GET {url}: {status} (ignored)")
    return ProbeResult(status in healthy_statuses, f"GET {url}: {status}")


@dataclass(frozen=True, slots=True)
class HttpTarget:
    scheme: str
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


_INSECURE_TLS = ssl.create_default_context()
_INSECURE_TLS.check_hostname = False
_INSECURE_TLS.verify_mode = ssl.CERT_NONE


async def _status_of(url: HttpTarget, ignore_1xx: bool) -> int:
    tls = _INSECURE_TLS if url.scheme == "https" else None
    reader, writer = await asyncio.open_connection(url.host, url.port, ssl=tls)
    try:
        host = f"[{url.host}]" if ":" in url.host else url.host
        writer.write(
            f"GET {url.path} HTTP/1.1\r\nHost: {host}:{url.port}\r\n"
            "User-Agent: tessera-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        while True:
            status = _parse_status_line(await reader.readline())
            if not 100 <= status < 200 or ignore_1xx:
                return status
            while (await reader.readline()).strip():  # the interim answer's headers
                pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _parse_status_line(line: bytes) -> int:
    if not line:
        raise ValueError("the server closed the connection without answering")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:60]!r}")
    return int(parts[1])


async def probe_tcp(host: str, port: int, timeout: float | None) -> ProbeResult:
    """Healthy when a TCP connection to `host:port` opens."""
    where = f"TCP {host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"{where}: timed out after {timeout:g}s")
    except OSError as error:
        return ProbeResult(False, f"{where}: {_describe(error)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, f"{where}: connected")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Where and as whom a task's command probes run."""

    task_id: str
    sandbox: str
    env: Mapping[str, str]
    user: str | None = None
    # Set for containers: the command runs inside the container (its user, env, cwd).
    exec_prefix: tuple[str, ...] = ()


async def probe_command(
    command: str, context: CommandContext, timeout: float | None
) -> ProbeResult:
    """Healthy when `/bin/sh -c command` exits 0 within `timeout`."""
    try:
        argv, env = _command_argv(command, context)
    except LaunchFailed as error:
        return ProbeResult(False, f"command {command!r}: {error}")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=context.sandbox,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        return ProbeResult(False, f"command {command!r}: cannot start: {error.strerror or error}")
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            output, code = await asyncio.gather(_tail(process.stdout), process.wait())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return ProbeResult(False, f"command {command!r}: timed out after {timeout:g}s")
    finally:
        if process.returncode is None:  # cancelled: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    said = output.decode(errors="replace").strip().splitlines()
    last = f": {said[-1]}" if said else ""
    return ProbeResult(code == 0, f"command {command!r} exited {code}{last}")


def _command_argv(command: str, context: CommandContext) -> tuple[list[str], dict[str, str]]:
    if context.exec_prefix:
        return [*context.exec_prefix, "/bin/sh", "-c", command], dict(ROOT_WRAPPER_ENV)
    me = current_user()
    run_as: RunAs = lookup_user(context.user) if context.user and me.uid == 0 else me
    spec = LaunchSpec(task_id=context.task_id, command=command, env=context.env)
    env = task_environment(spec, run_as, context.sandbox)
    switch = None
    if run_as.uid != me.uid:
        setpriv, env_tool = shutil.which("setpriv"), shutil.which("env")
        if not (setpriv and env_tool):
            raise LaunchFailed(f"cannot run as {run_as.name!r}: setpriv is not installed")
        switch = SwitchTools(setpriv, env_tool)
    argv = command_line(spec, run_as, env, switch)
    return argv, dict(ROOT_WRAPPER_ENV) if switch else env


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-OUTPUT_TAIL:]
    return kept


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__
