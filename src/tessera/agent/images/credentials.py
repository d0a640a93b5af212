"""Registry credentials: the agent-wide Docker `config.json` and the per-pull credential.

`auths` keys may be a host (`registry:5000`), a URL (`https://registry:5000/v2/`) or Docker
Hub's `https://index.docker.io/v1/`; an entry holds `auth` (base64 of `user:password`) or
`username` and `password`. Not supported, and said so when a registry asks for credentials:
`credsStore`/`credHelpers` (they run `docker-credential-*` programs) and `identitytoken`
(the OAuth refresh-token flow). The file is read again when its modification time changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tessera.agent.images.errors import INVALID, PullFailed
from tessera.model.image_reference import normalise_registry


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the config file says about one registry: a credential, or why there is none
    usable (`note`, added to an "unauthorized" error)."""

    credential: Credential | None
    note: str | None = None


def registry_key(key: str) -> str:
    """A config.json `auths` key as a registry name: scheme and path dropped, Hub unified."""
    text = key.strip()
    text = urlsplit(text).netloc if "://" in text else text.split("/", 1)[0]
    return normalise_registry(text)


class DockerConfig:
    """An agent-wide docker `config.json`; `lookup(registry)` reads it (again when changed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._auths: dict[str, Lookup] = {}
        self._helpers: dict[str, str] = {}
        self._store: str | None = None

    def lookup(self, registry: str) -> Lookup:
        self._reload()
        wanted = normalise_registry(registry)
        found = self._auths.get(wanted)
        if found is not None and found.credential is not None:
            return found
        unsupported = self._helpers.get(wanted) or self._store
        if unsupported is not None:
            return Lookup(
                None,
                f"{self.path} names the credential helper docker-credential-{unsupported}, "
                "which Tessera does not run; put an `auth` entry under `auths` instead",
            )
        return found or Lookup(None)

    def _reload(self) -> None:
        try:
            status = self.path.stat()
        except OSError as error:
            raise PullFailed(INVALID, f"cannot read docker config {self.path}: {error}") from None
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp == self._stamp:
            return
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as error:
            raise PullFailed(INVALID, f"cannot read docker config {self.path}: {error}") from None
        if not isinstance(document, dict):
            raise PullFailed(INVALID, f"docker config {self.path} is not a JSON object")
        self._auths = _parse_auths(document.get("auths"), self.path)
        helpers = document.get("credHelpers")
        self._helpers = (
            {registry_key(key): str(value) for key, value in helpers.items()}
            if isinstance(helpers, dict)
            else {}
        )
        store = document.get("credsStore")
        self._store = store if isinstance(store, str) and store else None
        self._stamp = stamp


def _parse_auths(auths: object, path: Path) -> dict[str, Lookup]:
    if auths is None:
        return {}
    if not isinstance(auths, dict):
        raise PullFailed(INVALID, f"docker config {path}: `auths` is not an object")
    parsed: dict[str, Lookup] = {}
    for key, entry in auths.items():
        if isinstance(entry, dict):
            parsed[registry_key(str(key))] = _parse_entry(str(key), entry, path)
    return parsed


def _parse_entry(key: str, entry: dict[str, object], path: Path) -> Lookup:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise PullFailed(
                INVALID, f"docker config {path}: `auth` of {key!r} is not base64 of user:password"
            ) from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise PullFailed(
                INVALID,
                f"docker config {path}: `auth` of {key!r} has no ':' between user and password",
            )
        return Lookup(Credential(username, password))
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and user:
        return Lookup(Credential(user, secret))
    if entry.get("identitytoken"):
        return Lookup(
            None,
            f"{path} holds an identity token for {key!r}, which Tessera does not use; "
            "put `auth` (base64 of user:password) there instead",
        )
    return Lookup(None)


def credential_key(root: Path) -> bytes:
    """The store's secret for hashing credentials, made once (0600): a plain hash of a weak
    password written in images.json could be reversed by guessing."""
    path = root / "credential-key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = os.urandom(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(descriptor, secret)
    finally:
        os.close(descriptor)
    return secret


def credential_hash(key: bytes, registry: str, credential: Credential | None) -> str | None:
    """Who pulled: a keyed hash of registry and credential, None for an anonymous pull."""
    if credential is None:
        return None
    message = "\0".join((registry, credential.username, credential.password)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
