"""One probe each: HTTP statuses and timeouts, TCP connects, shell commands in the sandbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.agent.health_probes import (
    CommandContext,
    HttpTarget,
    probe_command,
    probe_http,
    probe_tcp,
)
from tessera.testing.http_stub import HttpStub


@pytest.fixture
async def stub() -> AsyncIterator[HttpStub]:
    server = await HttpStub().start()
    yield server
    await server.stop()


def at(stub: HttpStub, path: str = "/") -> HttpTarget:
    return HttpTarget("http", "127.0.0.1", stub.port, path)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (399, True), (404, False)])
async def test_http_status_decides(stub: HttpStub, status: int, ok: bool) -> None:
    stub.status = status
    result = await probe_http(at(stub, "/health"), 2)
    assert result.ok is ok
    assert f": {status}" in result.detail
    assert stub.requests == ["GET /health HTTP/1.1"]


async def test_http_1xx_is_ignored_only_when_asked(stub: HttpStub) -> None:
    stub.status = 102  # interim only, then the server hangs up
    assert (await probe_http(at(stub), 2)).ok is False
    assert (await probe_http(at(stub), 2, ignore_1xx=True)).ok is None


async def test_http_interim_answers_are_skipped(stub: HttpStub) -> None:
    stub.interim = 100
    assert (await probe_http(at(stub), 2)).ok is True
    assert (await probe_http(at(stub), 2, ignore_1xx=True)).ok is None


async def test_https_without_certificate_checks(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = await HttpStub(tls=tls).start()
    try:
        result = await probe_http(HttpTarget("https", "127.0.0.1", server.port, "/s"), 5)
        assert result.ok is True, result.detail
        plain = await probe_http(HttpTarget("http", "127.0.0.1", server.port), 5)
        assert plain.ok is False
    finally:
        await server.stop()


async def test_http_timeout_and_refused(stub: HttpStub) -> None:
    stub.delay = 2
    started = time.monotonic()
    slow = await probe_http(at(stub), 0.2)
    assert slow.ok is False and "timed out" in slow.detail
    assert time.monotonic() - started < 1.5
    refused = await probe_http(HttpTarget("http", "127.0.0.1", closed_port()), 2)
    assert refused.ok is False
    assert "refused" in refused.detail.lower()


async def test_readiness_style_status_sets(stub: HttpStub) -> None:
    stub.status = 204
    assert (await probe_http(at(stub), 2, frozenset({200}))).ok is False
    assert (await probe_http(at(stub), 2, frozenset({200, 204}))).ok is True


async def test_tcp(stub: HttpStub) -> None:
    assert (await probe_tcp("127.0.0.1", stub.port, 2)).ok is True
    refused = await probe_tcp("127.0.0.1", closed_port(), 2)
    assert refused.ok is False and refused.detail.endswith("Connection refused")


def context(tmp_path: Path, **env: str) -> CommandContext:
    return CommandContext("app.1", str(tmp_path), {"PATH": os.environ["PATH"], **env})


async def test_command_runs_in_sandbox_with_task_env(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    result = await probe_command(
        'test -f ready && test "$PORT0" = 31001 && test "$MESOS_SANDBOX" = "$PWD" && echo fine',
        context(tmp_path, PORT0="31001"),
        5,
    )
    assert result.ok is True, result.detail
    assert result.detail.endswith("exited 0: fine")


async def test_command_failure_keeps_the_last_line(tmp_path: Path) -> None:
    result = await probe_command("echo one; echo two >&2; exit 3", context(tmp_path), 5)
    assert result.ok is False
    assert result.detail.endswith("exited 3: two")


async def test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    started = time.monotonic()
    result = await probe_command(f"sleep 30 & echo $! > {marker}; wait", context(tmp_path), 0.5)
    assert result.ok is False and "timed out" in result.detail
    assert time.monotonic() - started < 5
    child = int(marker.read_text())
    for _ in range(50):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the probe's child survived the timeout")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_command_as_unknown_user_fails_cleanly(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("user switching needs root")
    ctx = CommandContext("app.1", str(tmp_path), {}, user="no-such-user-here")
    result = await probe_command("true", ctx, 5)
    assert result.ok is False and "no-such-user-here" in result.detail
