"""Real image registries on loopback for tests and the benchmark, and the ways they fail.

`Registry` runs Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with a free port,
its storage in a temp dir (deleted on stop) and deletes enabled, in one of three modes:
anonymous, Basic (an htpasswd file with bcrypt hashes) or token (a `TokenServer` thread that
signs ES256 JWTs carrying an `x5c` certificate the registry trusts through
`rootcertbundle`). One registry can serve many tests: give each test its own repository
(`unique_repository`).

Failures to test pulls against: `StallingProxy` passes manifests but trickles blob bodies
(a pull stalls), and `DownRegistry` is an address where nothing listens.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx

from tessera.local.registry import registry_config
from tessera.testing.cluster import free_port

AuthMode = Literal["none", "basic", "token"]

MISSING_REASON = (
    "docker-registry not found: `make` installs it as root (apt-get install docker-registry)"
)
DEFAULT_USERS: Mapping[str, str] = {"tessera": "tessera-secret"}
SERVICE = "tessera-test-registry"
ISSUER = "tessera-test-token-issuer"
# distribution 2.8 accepts a token until 60 s after its `exp` (clock-skew leeway).
REGISTRY_LEEWAY = 60


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or next(
        (
            p
            for p in ("/usr/bin/docker-registry", "/usr/local/bin/registry")
            if os.access(p, os.X_OK)
        ),
        None,
    )


def require_registry() -> str:
    """The binary's path, or the calling test is skipped with the reason printed."""
    import pytest

    binary = registry_binary()
    if binary is None:
        print(MISSING_REASON)
        pytest.skip(MISSING_REASON)
    return binary


def unique_repository(prefix: str = "test") -> str:
    return f"{prefix}/r{uuid.uuid4().hex[:10]}"


class Registry:
    """One `docker-registry serve` process; use as a context manager or start() and stop()."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        auth: AuthMode = "none",
        users: Mapping[str, str] | None = None,
        token_ttl: float = 60.0,
    ) -> None:
        self.auth = auth
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.token_ttl = token_ttl
        self.dir = Path(tempfile.mkdtemp(prefix="tessera-registry-", dir=root))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, as an image reference spells the registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str]:
        """The first configured user and password."""
        return next(iter(self.users.items()))

    @property
    def log_path(self) -> Path:
        return self.dir / "registry.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> Registry:
        binary = registry_binary()
        if binary is None:
            raise RuntimeError(MISSING_REASON)
        try:
            if self.auth == "token":
                self.token_server = TokenServer(self.dir, self.users, ttl=self.token_ttl).start()
            for _attempt in range(3):  # a free port can be taken between probe and bind
                self.port = free_port()
                config = self.dir / "config.yml"
                config.write_text(json.dumps(self._config(), indent=2))
                if self._launch(binary, config, timeout):
                    return self
            raise RuntimeError(f"docker-registry did not start:\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, binary: str, config: Path, timeout: float) -> bool:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log():
                    return False
                raise RuntimeError(f"docker-registry exited:\n{self.log()[-3000:]}")
            if self.answers():
                return True
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry not answering after {timeout}s:\n{self.log()[-3000:]}")

    def answers(self) -> bool:
        """GET /v2/ gets an API answer (200 anonymous, 401 with auth)."""
        try:
            answer = httpx.get(f"{self.url}/v2/", timeout=1.0)
        except httpx.HTTPError:
            return False
        return answer.status_code in (200, 401)

    def _config(self) -> dict[str, Any]:
        config = registry_config(self.dir / "storage", self.host)
        config["storage"]["maintenance"] = {"uploadpurging": {"enabled": False}}
        config["http"]["secret"] = secrets.token_hex(16)
        if self.auth == "basic":
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text(htpasswd_lines(self.users))
            config["auth"] = {"htpasswd": {"realm": SERVICE, "path": str(htpasswd)}}
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            }
        return config

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.token_server is not None:
            self.token_server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def htpasswd_lines(users: Mapping[str, str]) -> str:
    """bcrypt at the lowest cost: the registry checks the hash on every request."""
    import bcrypt

    return "".join(
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for user, password in users.items()
    )


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Threaded:
    """An HTTP server on 127.0.0.1:<free port> served from a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.server.owner = self  # type: ignore[attr-defined]
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.stopping = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()


class TokenServer(_Threaded):
    """Issues registry tokens: the configured users get the pull/push/delete they ask for,
    anonymous callers a token granting nothing, wrong passwords a 401. `ttl` may be short (a
    few seconds) so that a test sees the client re-authenticate in the middle of a pull."""

    def __init__(self, directory: Path, users: Mapping[str, str], *, ttl: float = 60.0) -> None:
        super().__init__(_TokenHandler)
        self.users = dict(users)
        self.ttl = ttl
        self.cert_path = directory / "token-signer.pem"
        self.key, certificate_der = _signing_key(self.cert_path)
        self.x5c = [base64.b64encode(certificate_der).decode()]
        self.issued: list[tuple[str, str]] = []  # (subject or "", scope) per token

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def start(self) -> TokenServer:
        self._start()
        return self

    def token(self, subject: str, scopes: list[str]) -> dict[str, Any]:
        import jwt

        now = int(time.time())
        access = _grants(scopes) if subject else []
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,  # a string: distribution 2.8 does not read a list
            # The registry adds its leeway to `exp`: take it off so `ttl` is the real lifetime.
            "exp": now + max(1, round(self.ttl)) - REGISTRY_LEEWAY,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": self.x5c})
        self.issued.append((subject, " ".join(scopes)))
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        return {
            "token": token,
            "access_token": token,
            "expires_in": max(1, round(self.ttl)),
            "issued_at": issued_at.replace("+00:00", "Z"),
        }


_SCOPE = re.compile(r"^repository:([^:]+):(.*)$")


def _grants(scopes: list[str]) -> list[dict[str, Any]]:
    grants = []
    for scope in scopes:
        match = _SCOPE.match(scope)
        if match:
            wanted = [a for a in match.group(2).split(",") if a in ("pull", "push", "delete", "*")]
            grants.append({"type": "repository", "name": match.group(1), "actions": wanted})
    return grants


def _signing_key(cert_path: Path) -> tuple[Any, bytes]:
    """A P-256 key and a self-signed certificate for it, written to `cert_path` as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate.public_bytes(serialization.Encoding.DER)


class _TokenHandler(_Handler):
    def do_GET(self) -> None:
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path != "/token":
            self.reply(404, b'{"error":"not found"}')
            return
        subject = self._subject(owner)
        if subject is None:
            self.reply(401, b'{"details":"wrong user name or password"}')
            return
        scopes = parse_qs(url.query).get("scope", [])
        self.reply(200, json.dumps(owner.token(subject, scopes)).encode())

    def _subject(self, owner: TokenServer) -> str | None:
        """The user name, "" for anonymous, None for wrong credentials."""
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return ""
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        known = owner.users.get(user)
        return user if known is not None and secrets.compare_digest(known, password) else None


_BLOB_PATH = re.compile(r"^/v2/.+/blobs/[a-z0-9]+:[0-9a-f]+$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class StallingProxy(_Threaded):
    """In front of a registry: everything passes, except that blob bodies (GET of
    `/v2/<name>/blobs/<digest>`) stop after `pass_bytes` and then trickle at `rate` bytes per
    second (0: nothing more at all), so a pull makes no real progress and has to time out."""

    def __init__(self, upstream: str, *, pass_bytes: int = 4096, rate: float = 1.0) -> None:
        super().__init__(_StallingHandler)
        self.upstream = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.pass_bytes = pass_bytes
        self.rate = rate
        self.stalled: list[str] = []  # paths of the blobs being trickled

    def start(self) -> StallingProxy:
        self._start()
        return self

    def __enter__(self) -> StallingProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _StallingHandler(_Handler):
    def do_GET(self) -> None:
        self._relay()

    def do_HEAD(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def do_PUT(self) -> None:
        self._relay()

    def do_PATCH(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def _relay(self) -> None:
        owner: StallingProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = owner.upstream.netloc
        upstream = http.client.HTTPConnection(
            owner.upstream.hostname or "127.0.0.1", owner.upstream.port, timeout=30
        )
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            if self.command == "GET" and answer.status == 200 and _BLOB_PATH.match(self.path):
                self._trickle(owner, answer)
            else:
                self._pass(answer)
        finally:
            upstream.close()

    def _start_reply(self, answer: http.client.HTTPResponse, length: int) -> None:
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _pass(self, answer: http.client.HTTPResponse) -> None:
        body = answer.read()
        declared = answer.getheader("Content-Length")
        length = int(declared) if self.command == "HEAD" and declared else len(body)
        self._start_reply(answer, length)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _trickle(self, owner: StallingProxy, answer: http.client.HTTPResponse) -> None:
        owner.stalled.append(self.path)
        self._start_reply(answer, int(answer.getheader("Content-Length") or 0))
        try:
            self.wfile.write(answer.read(owner.pass_bytes))
            self.wfile.flush()
            while not owner.stopping.is_set():
                if owner.rate <= 0:
                    owner.stopping.wait(1.0)
                    continue
                byte = answer.read(1)
                if not byte:
                    return
                self.wfile.write(byte)
                self.wfile.flush()
                owner.stopping.wait(1.0 / owner.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what a stall test expects
        self.close_connection = True


class DownRegistry:
    """A loopback address where nothing listens: connecting is refused. The port stays bound
    (not listening) until close(), so no other process can take it meanwhile."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> DownRegistry:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
