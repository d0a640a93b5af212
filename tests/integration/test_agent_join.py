"""Agents joining with real processes: token and pin, restarts without a token, wrong pins,
revocation, the mutual-TLS channel refusing strangers, and certificate renewal."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from tessera.clock import SystemClock
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.security.ca import (
    agent_client_context,
    cert_pem,
    certificate_request,
    cli_client_context,
    csr_pem,
    key_pem,
    new_ca,
    new_key,
    sign_agent_client,
)
from tessera.testing.cluster import Cluster, Daemon, wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster(tmp_path)
    found.start_master(extra=["--agent-cert-lifetime", "6"])
    try:
        yield found
    finally:
        found.stop()


def _agent_id(cluster: Cluster, name: str) -> str:
    return (cluster.root / name / "agent-id").read_text().strip()


def _without(args: list[str], flag: str) -> list[str]:
    at = args.index(flag)
    return args[:at] + args[at + 2 :]


def test_join_restart_without_token_renew_and_revoke(cluster: Cluster) -> None:
    agent = cluster.start_agent("agent-1")
    agent_id = _agent_id(cluster, "agent-1")
    tls = cluster.root / "agent-1" / "tls"
    assert (tls / "agent.key").stat().st_mode & 0o777 == 0o600
    # kill -9, then a start without any token: it reconnects with its certificate.
    agent.kill9()
    wait_for(lambda: not cluster.agent_registered("agent-1"), 20, "the master to notice")
    args = cluster.agent_args("agent-1", "cpus:1;mem:256")
    args = _without(_without(args, "--join-token"), "--ca-pin")
    second = Daemon("agent-1b", args, cluster.root / "agent-1b.log").start()
    cluster.agents.append(second)
    wait_for(lambda: cluster.agent_registered("agent-1"), 20, "the agent to come back")
    assert _agent_id(cluster, "agent-1") == agent_id
    # Certificates last 6 s here: the agent renews at 4 s and stays connected past expiry.
    task = cluster.launch(cmd="sleep 60")
    cluster.wait_state(task["id"], "TASK_RUNNING")
    sandbox_url = cluster.get("/v1/agents")["agents"][0]["url"]
    assert sandbox_url.startswith("https://")
    first_serial = _serving_serial(sandbox_url, cluster.ssl_context)
    wait_for(lambda: "certificates renewed" in second.log(), 20, "a renewal")
    time.sleep(4)
    assert second.process is not None and second.process.poll() is None, second.log()
    assert cluster.agent_registered("agent-1")
    # The sandbox API's first certificate has expired by now: a verified handshake works
    # only because the renewed one was loaded into the listener.
    assert _serving_serial(sandbox_url, cluster.ssl_context) != first_serial
    # Revoked: disconnected, and refused when it comes back.
    revoked = cluster.cli("agent", "revoke", agent_id)
    assert revoked.returncode == 0, revoked.stderr
    assert second.process.wait(20) == 2
    third = Daemon("agent-1c", args, cluster.root / "agent-1c.log").start()
    cluster.agents.append(third)
    assert third.process is not None and third.process.wait(20) == 2
    assert "revoked" in third.log()


def _serving_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial of the certificate an agent's HTTPS API presents (verified: chain to the
    cluster CA, host name, expiry)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_wrong_pin_refuses_to_join(cluster: Cluster) -> None:
    args = cluster.agent_args("intruder", "cpus:1;mem:256")
    args[args.index("--ca-pin") + 1] = "sha256:" + "0" * 64
    result = cluster.cli(*args, timeout=30)
    assert result.returncode == 2
    assert "does not match the pin" in result.stderr
    assert not (cluster.root / "intruder" / "tls" / "agent.crt").exists()
    no_pin = _without(cluster.agent_args("intruder", "cpus:1;mem:256"), "--ca-pin")
    result = cluster.cli(*no_pin, timeout=30)
    assert result.returncode == 2
    assert "--ca-pin" in result.stderr


def _channel(cluster: Cluster) -> str:
    return f"wss://127.0.0.1:{cluster.agent_port}{AGENT_STREAM_PATH}"


def _ca(cluster: Cluster) -> bytes:
    return cluster.http.get("/ca/dcos-ca.crt").content


def _joined_context(cluster: Cluster, agent_id: str) -> ssl.SSLContext:
    token, _ = cluster.join_token(uses=1)
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tessera agent")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    body = {"token": token, "csr": csr_pem(csr).decode(), "hostname": "h", "agent_id": agent_id}
    answer = httpx.post(cluster.url + "/v1/join", json=body, verify=cluster.ssl_context).json()
    return agent_client_context(answer["ca"].encode(), answer["certificate"].encode(), key_pem(key))


async def _refused(url: str, context: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionClosed, InvalidMessage, OSError, EOFError)):
        async with connect(url, ssl=context, open_timeout=5) as connection:
            await connection.send(json.dumps({"type": "heartbeat"}))
            await connection.recv()


def test_the_channel_refuses_strangers_and_impersonation(cluster: Cluster) -> None:
    url = _channel(cluster)
    wait_for(lambda: _ca(cluster), 10, "the CA")
    no_certificate = cli_client_context(_ca(cluster))
    asyncio.run(_refused(url, no_certificate))
    foreign = new_ca("elsewhere", SystemClock())
    key = new_key()
    cert = sign_agent_client(certificate_request(key, "x-1"), "x-1", foreign, SystemClock())
    foreign_context = agent_client_context(_ca(cluster), cert_pem(cert), key_pem(key))
    asyncio.run(_refused(url, foreign_context))

    async def impersonate() -> int | None:
        context = _joined_context(cluster, "one")
        async with connect(url, ssl=context, open_timeout=5) as connection:
            await connection.send(
                json.dumps(
                    {
                        "type": "register",
                        "agent_id": "two",
                        "hostname": "h",
                        "resources": {"cpus": 1, "mem": 128, "disk": 0},
                    }
                )
            )
            with pytest.raises(ConnectionClosed):
                await connection.recv()
            return connection.close_code

    assert asyncio.run(impersonate()) == 1008
    events = cluster.get("/v1/audit")
    assert "tried to register as agent two" in json.dumps(events)
