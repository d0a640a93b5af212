"""The agent's side of joining: the pinned CA, its own key, the certificates the master signs.

First start: the agent downloads the CA (`GET /ca/dcos-ca.crt`) and checks it against
`--ca-pin` (or compares it with `--ca-file`) before it sends anything, makes its key (0600,
never sent), and posts a certificate request with its join token to `POST /v1/join`. The
master's answer (client and serving certificates, the CA) is kept in `<work dir>/tls/`, so
later starts, kill -9 included, reconnect with the certificate and need no token.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tessera.agent.disk import write_atomic
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.security.ca import (
    CLOCK_SKEW,
    RENEW_AT_FRACTION,
    CertificateRefused,
    agent_client_context,
    check_ca_pin,
    cli_client_context,
    csr_pem,
    key_pem,
    load_cert,
    new_key,
    server_context,
)
from tessera.security.join_tokens import PREFIX as JOIN_TOKEN_PREFIX

log = logging.getLogger(__name__)

TLS_DIR = "tls"
KEY_FILE = "agent.key"
CERT_FILE = "agent.crt"
SERVING_FILE = "serving.crt"
CA_FILE = "ca.crt"
AGENT_URL_HEADER = "Tessera-Agent-Url"
TIMEOUT = 10.0
# How long a first start keeps trying masters that do not answer yet.
JOIN_PATIENCE = 60.0


class JoinFailed(Exception):
    """Joining cannot succeed as configured (no token, wrong pin, token refused)."""


@dataclass(frozen=True)
class Credentials:
    directory: Path

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_FILE

    @property
    def serving_path(self) -> Path:
        return self.directory / SERVING_FILE

    def exists(self) -> bool:
        return all(p.exists() for p in (self.key_path, self.cert_path, self.ca_path))

    def client_context(self) -> ssl.SSLContext:
        """Read afresh for every connection: a renewed certificate is used from then on."""
        return agent_client_context(self.ca_path, self.cert_path, self.key_path)

    def renewal_request(self) -> str:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return _request(key)

    def store_certificate(self, pem: str) -> None:
        load_cert(pem.encode())  # never replace a good certificate with garbage
        write_atomic(self.cert_path, pem, 0o600)

    def store_serving(self, pem: str) -> None:
        load_cert(pem.encode())
        write_atomic(self.serving_path, pem, 0o644)

    def serving_context(self) -> ssl.SSLContext:
        """The sandbox API's HTTPS context; `reload_serving` puts a renewed certificate in."""
        return server_context(self.serving_path, self.key_path)

    def reload_serving(self, context: ssl.SSLContext) -> None:
        """New handshakes use the renewed certificate; open connections keep theirs."""
        context.load_cert_chain(self.serving_path, self.key_path)

    def renew_in(self, now: float | None = None) -> float:
        """Seconds until the client certificate is 2/3 through its life (0: renew now)."""
        cert = load_cert(self.cert_path.read_bytes())
        # Certificates start CLOCK_SKEW early; the life that counts starts at issue.
        start = cert.not_valid_before_utc.timestamp() + CLOCK_SKEW.total_seconds()
        end = cert.not_valid_after_utc.timestamp()
        start = min(start, end)
        at = start + (end - start) * RENEW_AT_FRACTION
        return max(0.0, at - (time.time() if now is None else now))


def credentials(work_dir: Path) -> Credentials:
    return Credentials(work_dir / TLS_DIR)


def _request(key: ec.EllipticCurvePrivateKey) -> str:
    # No identity claimed: the master decides the agent id and writes it into the certificate.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tessera agent")])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return csr_pem(builder.sign(key, hashes.SHA256())).decode()


def fetch_ca(master: str, pin: str | None, ca_file: Path | None) -> tuple[bytes, str]:
    """The master's CA (checked against the pin or the trusted file) and its agent URL."""
    if pin is None and ca_file is None:
        raise JoinFailed(
            "joining needs the cluster CA's pin (--ca-pin sha256:..., printed by "
            "`tessera join-token create` and in the master's log) or the CA file (--ca-file)"
        )
    # Not verified yet (the agent has nothing to verify with): the pin or the file is the
    # check, and the join itself is then made over TLS verified with the CA it vouched for.
    response = httpx.get(master.rstrip("/") + "/ca/dcos-ca.crt", timeout=TIMEOUT, verify=False)
    response.raise_for_status()
    presented = response.content
    try:
        if pin is not None:
            check_ca_pin(presented, pin)
        elif ca_file is not None and load_cert(ca_file.read_bytes()) != load_cert(presented):
            raise CertificateRefused(f"the master's CA is not the one in {ca_file}")
    except (CertificateRefused, ValueError) as error:
        raise JoinFailed(f"{master}: {error}; refusing to join") from None
    return presented, channel_url(master, response.headers.get(AGENT_URL_HEADER, ""))


def channel_url(master: str, announced: str) -> str:
    """The agent channel of `master`: the host the agent dials it at, the port it announces."""
    port = urlsplit(announced).port if announced else None
    parts = urlsplit(master)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"wss://{host}:{port or 5052}{AGENT_STREAM_PATH}"


def discover_channel(master: str, ca_path: Path) -> str:
    """For a joined agent: the master's agent channel URL (its CA must be the agent's)."""
    response = httpx.get(
        master.rstrip("/") + "/ca/dcos-ca.crt",
        timeout=TIMEOUT,
        verify=cli_client_context(ca_path),
    )
    response.raise_for_status()
    if load_cert(response.content) != load_cert(ca_path.read_bytes()):
        raise CertificateRefused(f"{master} serves another cluster's CA")
    return channel_url(master, response.headers.get(AGENT_URL_HEADER, ""))


def join(
    masters: tuple[str, ...],
    work_dir: Path,
    token: str,
    hostname: str,
    agent_id: str | None,
    pin: str | None,
    ca_file: Path | None,
) -> str:
    """Join through the first master that answers; the agent id the master chose."""
    if not token:
        raise JoinFailed(
            "this agent has not joined yet: give it a join token "
            "(`tessera join-token create` prints one) with --join-token or --join-token-file"
        )
    if not token.startswith(JOIN_TOKEN_PREFIX + "."):
        raise JoinFailed(
            "the join token is not one (tsr1.<id>.<secret>): the old shared join-token file "
            "is gone; make a token with `tessera join-token create`"
        )
    deadline = time.monotonic() + JOIN_PATIENCE
    while True:
        try:
            return _join_once(masters, work_dir, token, hostname, agent_id, pin, ca_file)
        except _Unreachable as error:
            if time.monotonic() > deadline:
                raise JoinFailed(f"no master accepted the join: {error}") from None
            time.sleep(1.0)


class _Unreachable(Exception):
    pass


def _join_once(
    masters: tuple[str, ...],
    work_dir: Path,
    token: str,
    hostname: str,
    agent_id: str | None,
    pin: str | None,
    ca_file: Path | None,
) -> str:
    errors = []
    for master in masters:
        try:
            ca, _ = fetch_ca(master, pin, ca_file)
            key = new_key()
            body = {"token": token, "csr": _request(key), "hostname": hostname}
            if agent_id:
                body["agent_id"] = agent_id
            response = httpx.post(
                master.rstrip("/") + "/v1/join",
                json=body,
                timeout=TIMEOUT,
                verify=cli_client_context(ca),
            )
        except httpx.HTTPError as error:
            errors.append(f"{master}: {error}")
            continue
        if response.status_code == 401:
            raise JoinFailed(f"{master} refused the join token (expired, used up or revoked?)")
        if response.status_code != 200:
            errors.append(f"{master}: {response.status_code} {response.text[:200]}")
            continue
        answer = response.json()
        if load_cert(answer["ca"].encode()) != load_cert(ca):
            raise JoinFailed(f"{master} answered with another CA than the pinned one")
        creds = credentials(work_dir)
        creds.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(creds.key_path, key_pem(key), 0o600)
        write_atomic(creds.serving_path, answer["serving_certificate"], 0o644)
        write_atomic(creds.ca_path, answer["ca"], 0o644)
        # Last: the certificate's presence means "joined" (a crash before it joins again).
        creds.store_certificate(answer["certificate"])
        log.info("joined the cluster through %s as agent %s", master, answer["agent_id"])
        return str(answer["agent_id"])
    raise _Unreachable("; ".join(errors))
