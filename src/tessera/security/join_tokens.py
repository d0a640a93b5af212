"""Join tokens: how a new agent proves the operator let it in, once or N times, before expiry.

A token reads `tsr1.<id>.<secret>`: the id (16 hex digits) names the record and may appear in
logs and listings; the secret (32 random bytes, base64url) is shown once, at creation. The
registry keeps the id, a SHA-256 of the secret, the expiry, the uses left and an optional binding
(the host name the agent must announce, attributes it must declare). SHA-256 and not a slow
password hash: the secret has 256 bits of entropy, so there is no dictionary to slow down, and a
slow hash would only make every join (and every forged attempt) cost the master CPU. Checks use
`hmac.compare_digest`. The registry is pure state with an injected Clock: the master persists it
with `to_json`/`from_json`, and reads, consumes and writes it back in one store transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.clock import Clock

PREFIX = "tsr1"
_TOKEN = re.compile(r"tsr1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
# Compared against when the id is unknown, so an unknown id costs what a wrong secret costs.
_NO_SUCH_HASH = hashlib.sha256(b"tessera join token: none").hexdigest()


class JoinRefused(Exception):
    """The token does not admit this agent. `reason` is for the audit log; the caller should
    answer every refusal alike, so that a guesser learns nothing about which ids exist."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JoinTokenInfo:
    """What may be shown about a token: everything but its secret and the secret's hash."""

    token_id: str
    created_at: float
    expires_at: float
    uses_left: int
    hostname: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def usable(self, now: float) -> bool:
        return self.uses_left > 0 and now < self.expires_at


@dataclass(frozen=True)
class _Record:
    info: JoinTokenInfo
    secret_hash: str


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown to the operator once; never stored
    info: JoinTokenInfo


class JoinTokenRegistry:
    def __init__(self, clock: Clock, records: Mapping[str, _Record] | None = None) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = dict(records or {})

    def create(
        self,
        ttl: float,
        uses: int = 1,
        hostname: str | None = None,
        attributes: Mapping[str, str] | None = None,
        description: str = "",
    ) -> IssuedToken:
        if ttl <= 0:
            raise ValueError("a join token needs a positive time to live")
        if uses < 1:
            raise ValueError("a join token needs at least one use")
        token_id = secrets.token_hex(8)
        while token_id in self._records:
            token_id = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = self._clock.wall()
        info = JoinTokenInfo(
            token_id=token_id,
            created_at=now,
            expires_at=now + ttl,
            uses_left=uses,
            hostname=hostname,
            attributes=dict(attributes or {}),
            description=description,
        )
        self._records[token_id] = _Record(info, _hash(token_id, secret))
        return IssuedToken(f"{PREFIX}.{token_id}.{secret}", info)

    def consume(
        self, token: str, hostname: str | None = None, attributes: Mapping[str, str] | None = None
    ) -> JoinTokenInfo:
        """Spend one use of `token` for an agent announcing `hostname` and `attributes`; the
        token's record as it was before this use comes back, or JoinRefused is raised."""
        token_id, secret = parse_token(token)
        record = self._records.get(token_id)
        expected = record.secret_hash if record else _NO_SUCH_HASH
        if not hmac.compare_digest(_hash(token_id, secret), expected) or record is None:
            raise JoinRefused(f"unknown token id or wrong secret ({token_id})")
        info = record.info
        if self._clock.wall() >= info.expires_at:
            raise JoinRefused(f"token {token_id} has expired")
        if info.uses_left < 1:
            raise JoinRefused(f"token {token_id} has no uses left")
        if info.hostname is not None and info.hostname != hostname:
            raise JoinRefused(f"token {token_id} is for host {info.hostname!r}, not {hostname!r}")
        declared = attributes or {}
        for name, value in info.attributes.items():
            if declared.get(name) != value:
                raise JoinRefused(f"token {token_id} is for agents with {name}={value}")
        spent = replace(info, uses_left=info.uses_left - 1)
        self._records[token_id] = replace(record, info=spent)
        return info

    def revoke(self, token_id: str) -> bool:
        return self._records.pop(token_id, None) is not None

    def list_tokens(self) -> list[JoinTokenInfo]:
        return sorted((r.info for r in self._records.values()), key=lambda i: i.created_at)

    def prune(self) -> list[str]:
        """Drop used-up and expired tokens (kept until then so listings show them); their ids."""
        now = self._clock.wall()
        gone = [i for i, r in self._records.items() if not r.info.usable(now)]
        for token_id in gone:
            del self._records[token_id]
        return gone

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "tokens": [_record_json(self._records[i.token_id]) for i in self.list_tokens()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], clock: Clock) -> JoinTokenRegistry:
        if data.get("version") != 1:
            raise ValueError(f"unknown join token registry version {data.get('version')!r}")
        records = [_record_from_json(item) for item in data["tokens"]]
        return cls(clock, {r.info.token_id: r for r in records})


def parse_token(token: str) -> tuple[str, str]:
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise JoinRefused("not a join token (tsr1.<id>.<secret>)")
    return match.group(1), match.group(2)


def _hash(token_id: str, secret: str) -> str:
    # The id is hashed in so that a hash copied onto another record's id is worthless.
    return hashlib.sha256(f"{PREFIX}.{token_id}.{secret}".encode()).hexdigest()


def _record_json(record: _Record) -> dict[str, Any]:
    info = record.info
    return {
        "id": info.token_id,
        "sha256": record.secret_hash,
        "createdAt": info.created_at,
        "expiresAt": info.expires_at,
        "usesLeft": info.uses_left,
        "hostname": info.hostname,
        "attributes": dict(info.attributes),
        "description": info.description,
    }


def _record_from_json(item: Mapping[str, Any]) -> _Record:
    info = JoinTokenInfo(
        token_id=str(item["id"]),
        created_at=float(item["createdAt"]),
        expires_at=float(item["expiresAt"]),
        uses_left=int(item["usesLeft"]),
        hostname=item.get("hostname"),
        attributes={str(k): str(v) for k, v in item.get("attributes", {}).items()},
        description=str(item.get("description", "")),
    )
    return _Record(info, str(item["sha256"]))
