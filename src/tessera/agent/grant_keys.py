"""The master's public keys, as the agent needs them to check sandbox grants.

The agent fetches the cluster's JWKS from any of its masters (`GET /acs/api/v1/auth/jwks`,
public) and keeps it. A grant signed with a key id it does not know makes it fetch again,
at most once per `REFETCH_AFTER` seconds however many such grants arrive (forged ones cost
the master nothing), with concurrent requests sharing one fetch. Each key's id is computed
from the key itself (RFC 7638 thumbprint), never taken from the document, so a key is only
ever used under its own id.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.clock import Clock
from tessera.security.tokens import MIN_RSA_BITS, key_id

log = logging.getLogger(__name__)

JWKS_PATH = "/acs/api/v1/auth/jwks"
REFETCH_AFTER = 5.0
FETCH_TIMEOUT = 5.0
# A JWKS document is a few kilobytes; anything far larger is not one.
MAX_JWKS_BYTES = 256 * 1024


class MasterKeys:
    """The cluster's grant-verification keys by id, fetched from the masters on demand."""

    def __init__(
        self,
        masters: Callable[[], Sequence[str]],
        clock: Clock,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._masters = masters
        self._clock = clock
        self._verify = verify
        self._transport = transport
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def known(self) -> Mapping[str, rsa.RSAPublicKey]:
        return self._keys

    async def keys_for(self, kid: str) -> Mapping[str, rsa.RSAPublicKey]:
        """The known keys, fetched again first if `kid` is not among them (rate limited)."""
        if kid in self._keys:
            return self._keys
        async with self._lock:
            if kid in self._keys:
                return self._keys  # another request fetched it meanwhile
            now = self._clock.monotonic()
            if self._fetched_at is None or now - self._fetched_at >= REFETCH_AFTER:
                self._fetched_at = now
                fetched = await self._fetch()
                if fetched is not None:
                    self._keys = fetched
        return self._keys

    async def _fetch(self) -> dict[str, rsa.RSAPublicKey] | None:
        async with httpx.AsyncClient(
            timeout=FETCH_TIMEOUT, verify=self._verify, transport=self._transport
        ) as http:
            for master in self._masters():
                url = master.rstrip("/") + JWKS_PATH
                try:
                    response = await http.get(url)
                except httpx.HTTPError as error:
                    log.warning("cannot fetch the cluster's keys from %s: %s", url, error)
                    continue
                if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
                    log.warning("%s answered %d for the cluster's keys", url, response.status_code)
                    continue
                try:
                    return parse_jwks(response.json())
                except ValueError as error:
                    log.warning("%s: not a usable JWKS document: %s", url, error)
        return None


def parse_jwks(document: Any) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signing keys of a JWKS document by their thumbprint; ValueError if none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("no `keys` list")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in document["keys"]:
        key = _rsa_key(entry)
        if key is not None:
            keys[key_id(key)] = key
    if not keys:
        raise ValueError("no RS256 signing key")
    return keys


def _rsa_key(entry: Any) -> rsa.RSAPublicKey | None:
    if not isinstance(entry, dict) or entry.get("kty") != "RSA":
        return None
    if entry.get("alg", "RS256") != "RS256" or entry.get("use", "sig") != "sig":
        return None
    try:
        numbers = rsa.RSAPublicNumbers(_uint(entry["e"]), _uint(entry["n"]))
        key = numbers.public_key()
    except (KeyError, TypeError, ValueError):
        return None
    return key if key.key_size >= MIN_RSA_BITS else None


def _uint(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("not a base64url integer")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int.from_bytes(raw, "big")
