"""How the CLI finds and talks to the master, and turns failures into one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from tessera.local.paths import running_cluster_url
from tessera.local.profiles import current_profile, token_for, verify_for

err = Console(stderr=True, highlight=False)

START_HINT = (
    "start a local cluster with `tessera up`, or point the CLI at a master with "
    "--master URL or TESSERA_MASTER"
)


CA_HINT = (
    "set TESSERA_CA to the cluster CA's file, or log in with `tessera login URL --ca-pin "
    "sha256:...` (the pin is in the master's log)"
)

LOGIN_HINT = "log in with `tessera login URL`, or set TESSERA_TOKEN (a token from `tessera token`)"


def fail(message: str, code: int = 1) -> NoReturn:
    # Escaped: messages quote ids like Marathon's "[/shop/web]", which rich would read as tags.
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def resolve_masters(flag: str | None) -> list[str]:
    """--master, then TESSERA_MASTER, then the current profile (`tessera login`, `tessera
    up`), then the running local cluster; comma-separated."""
    profile = current_profile()
    url = (
        flag
        or os.environ.get("TESSERA_MASTER")
        or (profile.url if profile is not None else None)
        or running_cluster_url()
    )
    urls = [part.strip().rstrip("/") for part in (url or "").split(",") if part.strip()]
    if not urls:
        fail(f"no master to talk to: {START_HINT}")
    return urls


def resolve_master(flag: str | None) -> str:
    return resolve_masters(flag)[0]


def describe_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return f"HTTP {response.status_code}: {response.text.strip()[:200]}"
    message = str(body.get("message", f"HTTP {response.status_code}"))
    details = body.get("details") or []
    parts = [f"{d.get('path')}: {', '.join(d.get('errors', []))}" for d in details]
    return message + (" (" + "; ".join(parts) + ")" if parts else "")


class MasterClient:
    """Talks to the first master that answers; any master serves every request (a
    non-leader forwards to the leader), so there is no need to find the leader first."""

    def __init__(self, master: str | None, timeout: float = 10.0) -> None:
        self.urls = resolve_masters(master)
        self.url = self.urls[0]
        token = token_for(self.url)
        self.headers = {"Authorization": f"token={token}"} if token else {}
        # The cluster's own CA (TESSERA_CA, the profile's `ca`, a local cluster's ca.pem).
        self.verify = verify_for(self.url)
        self._http = httpx.Client(
            timeout=timeout, follow_redirects=True, headers=self.headers, verify=self.verify
        )

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        unavailable: httpx.Response | None = None
        untrusted: str | None = None
        for url in [self.url, *(u for u in self.urls if u != self.url)]:
            try:
                response = self._http.request(method, url + path, **kwargs)
            except httpx.ConnectError as error:
                if "CERTIFICATE_VERIFY_FAILED" in str(error):
                    untrusted = url
                continue
            if _try_next(method, response):
                unavailable = response
                continue
            self.url = url
            return response
        if unavailable is not None:
            return unavailable
        if untrusted is not None:
            fail(f"the certificate of {untrusted} is not from a CA this client trusts; {CA_HINT}")
        where = ", ".join(self.urls)
        fail(f"cannot reach the master at {where}: connection refused; {START_HINT}")

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The raw answer, whatever its status (callers that treat 409 or 204 themselves);
        only a master that cannot be reached ends the command."""
        try:
            return self._send(method, path, **kwargs)
        except httpx.TimeoutException:
            fail(f"the master at {self.url} did not answer in time")
        except httpx.HTTPError as error:
            fail(f"cannot talk to the master at {self.url}: {error}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        if response.status_code == 401:
            fail(f"{describe_error(response)}; {LOGIN_HINT}")
        if response.status_code >= 400:
            fail(describe_error(response))
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _try_next(method: str, response: httpx.Response) -> bool:
    """A 503 from a master without a leader (mid-failover): another master may have one.
    Writes move on only when they certainly were not applied (never sent to a leader)."""
    if response.status_code != 503:
        return False
    return method == "GET" or "no leading master" in response.text


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def read_token_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as error:
        fail(f"cannot read the join token file {path}: {error.strerror}")
