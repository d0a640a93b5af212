"""`tessera login URL` and `tessera token`: getting a token, keeping it in a profile."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import typer

from tessera.cli.client import describe_error, fail, resolve_master
from tessera.local.profiles import (
    Profile,
    ca_for,
    current_profile,
    load_profile,
    profile_for,
    profiles_dir,
    save_profile,
    token_for,
    verify_for,
)
from tessera.security.ca import CertificateRefused, check_ca_pin, cli_client_context, write_private

MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else profile).")
]


def _login(url: str, uid: str, password: str, verify: ssl.SSLContext | bool) -> str:
    try:
        answer = httpx.post(
            url.rstrip("/") + "/acs/api/v1/auth/login",
            json={"uid": uid, "password": password},
            timeout=30,
            verify=verify,
        )
    except httpx.HTTPError as error:
        fail(f"cannot reach {url}: {error}")
    if answer.status_code != 200:
        fail(f"login as {uid} refused: {describe_error(answer)}")
    token: str = answer.json()["token"]
    return token


def pinned_ca(url: str, pin: str) -> bytes:
    """The cluster CA `url` serves at /ca/dcos-ca.crt, if its key is the pinned one.

    Fetched without checking the master's certificate (nothing to check it with yet): the pin
    is the check, and everything after is verified against the CA it vouched for."""
    try:
        answer = httpx.get(url.rstrip("/") + "/ca/dcos-ca.crt", timeout=30, verify=False)
    except httpx.HTTPError as error:
        fail(f"cannot reach {url}: {error}")
    if answer.status_code != 200:
        fail(f"{url} did not serve its CA certificate: {describe_error(answer)}")
    try:
        check_ca_pin(answer.content, pin)
    except (CertificateRefused, ValueError) as error:
        fail(f"{url}: {error}; refusing to log in")
    return answer.content


def _trusted_ca(url: str, pin: str | None, ca_file: Path | None) -> bytes | None:
    """The CA to keep with the profile: pinned, given as a file, or the one already known."""
    if pin is not None:
        return pinned_ca(url, pin)
    known = str(ca_file) if ca_file is not None else ca_for(url)
    if known is None:
        return None  # a master with a certificate from a public CA: the system's store
    try:
        return Path(known).read_bytes()
    except OSError as error:
        fail(f"cannot read the CA file {known}: {error.strerror}")


def login(
    url: Annotated[str, typer.Argument(help="The master's URL, e.g. https://m1:5050.")],
    username: Annotated[str, typer.Option("--username", "-u", prompt=True)],
    password_file: Annotated[
        Path | None, typer.Option(help="Read the password from this file (else prompt).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    profile: Annotated[
        str | None, typer.Option(help="Profile name (default: the master's host and port).")
    ] = None,
    ca_pin: Annotated[
        str | None,
        typer.Option(
            "--ca-pin",
            help="The cluster CA's pin (sha256:..., in the master's log and printed by "
            "`tessera join-token create`): the CA is fetched, checked and kept.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="Trust this CA certificate file.")
    ] = None,
) -> None:
    """Log in to a cluster and make it the current profile of every `tessera` command."""
    if ca_pin is not None and ca_file is not None:
        fail("give --ca-pin or --ca-file, not both")
    ca = _trusted_ca(url, ca_pin, ca_file)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password_file is not None:
        password = password_file.read_text().strip()
    else:
        password = typer.prompt("Password", hide_input=True)
    token = _login(url, username, password, cli_client_context(ca) if ca else True)
    name = profile or (urlsplit(url).netloc.replace(":", "-") or "default")
    ca_path = None
    if ca is not None:
        # Next to the profile, so the profile keeps working wherever the file came from.
        ca_path = profiles_dir() / f"{name}.ca.pem"
        ca_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(ca_path, ca.decode())
    # The password is never stored: only the token (people's tokens last 8 hours).
    path = save_profile(
        Profile(
            name=name,
            url=url.rstrip("/"),
            token=token,
            uid=username,
            ca=str(ca_path) if ca_path else None,
        )
    )
    typer.echo(f"logged in to {url} as {username}; profile {name!r} ({path})")


def token(master: MasterOption = None) -> None:
    """Print a token for scripts and client libraries (`Authorization: token=<it>`): a fresh
    one when the profile can log in again (a local cluster's superuser), else the saved one."""
    url = resolve_master(master)
    found = profile_for(url)
    if found is not None and found.uid and found.password_file:
        try:
            password = Path(found.password_file).read_text().strip()
        except OSError as error:
            fail(f"cannot read {found.password_file}: {error.strerror}")
        typer.echo(_login(url, found.uid, password, verify_for(url)))
        return
    saved = token_for(url)
    if saved is None:
        fail(f"no credentials for {url}: log in with `tessera login {url}`")
    typer.echo(saved)


profile_app = typer.Typer(help="CLI profiles: which cluster and credentials commands use.")


@profile_app.command("list")
def profile_list() -> None:
    """Every profile; the current one is marked with *."""
    current = current_profile()
    for path in sorted(profiles_dir().glob("*.json")):
        found = load_profile(path.stem)
        if found is not None:
            mark = "*" if current is not None and current.name == found.name else " "
            typer.echo(f"{mark} {found.name:16s} {found.url}  {found.uid or ''}")


@profile_app.command("use")
def profile_use(name: str) -> None:
    """Make NAME the current profile (e.g. `local`, the one `tessera up` writes)."""
    found = load_profile(name)
    if found is None:
        fail(f"no profile {name!r}: see `tessera profile list`")
    save_profile(found)
    typer.echo(f"using profile {name!r} ({found.url})")
