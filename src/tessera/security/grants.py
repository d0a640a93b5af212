"""Sandbox grants: short-lived JWTs that let one caller read one task's sandbox on one agent.

The master issues a grant (`POST /v1/tasks/{id}/sandbox-grant`) after checking the caller's
`dcos:mesos:agent:sandbox:app_id:<app path> read`; the agent checks it on every request of its
HTTP API without asking the master anything (no proxy that would lend the master's own
credentials to the caller). A grant is an RS256 JWT signed with the cluster's token-signing
key, with:

| claim | value                                   | checked by the agent              |
|-------|-----------------------------------------|-----------------------------------|
| `aud` | `agent:<agent id>`                      | equals this agent's (else 401)    |
| `task`| the task id                             | equals the URL's task (else 403)  |
| `act` | `read`                                  | equals what the route needs (403) |
| `uid` | the caller                              | present (for the agent's log)     |
| `iss` | the cluster id                          | present (equal, when known)       |
| `typ` | `sandbox-grant`                         | equals it (else 401)              |
| `exp` | issued + 5 min (`iat`, `jti` too)       | against the injected Clock (401)  |

A grant is never an auth token and an auth token is never a grant: their audiences differ
(`tessera` against `agent:<id>`) and so do their `typ`s. Every refusal is a `GrantError` with
a stable reason and the HTTP status the agent answers (401: no valid grant for this agent;
403: a valid grant for something else); no input raises anything else. No I/O: keys come in
as arguments (the agent fetches them from the master's JWKS, agent/grant_keys.py).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.clock import Clock
from tessera.security.tokens import (
    DEFAULT_LEEWAY_SECONDS,
    MAX_TOKEN_CHARS,
    TokenError,
    TokenRefusal,
    decode_rs256,
    is_number,
    key_id,
    unverified_header,
)

GRANT_TTL_SECONDS = 300.0
GRANT_TYPE = "sandbox-grant"
AUDIENCE_PREFIX = "agent:"
_REQUIRED = ["aud", "task", "act", "uid", "iss", "iat", "exp", "jti", "typ"]


class Act(StrEnum):
    """What a grant allows on its task's sandbox; only reading exists today."""

    READ = "read"


class GrantRefusal(StrEnum):
    MALFORMED = "malformed"
    ALG_NOT_ALLOWED = "alg_not_allowed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_AGENT = "wrong_agent"
    BAD_ISSUER = "bad_issuer"
    MISSING_CLAIM = "missing_claim"
    BAD_TYPE = "bad_type"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_TASK = "wrong_task"
    WRONG_ACT = "wrong_act"


# A valid grant for another task or action is a refusal of an authenticated caller.
_FORBIDDEN = frozenset({GrantRefusal.WRONG_TASK, GrantRefusal.WRONG_ACT})


class GrantError(Exception):
    """A grant was refused; `reason` is stable and safe to log (never the grant itself)."""

    def __init__(self, reason: GrantRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason

    @property
    def status(self) -> int:
        return 403 if self.reason in _FORBIDDEN else 401


@dataclass(frozen=True, slots=True)
class SandboxGrant:
    agent_id: str
    task_id: str
    act: Act
    uid: str
    issuer: str
    issued_at: float
    expires_at: float
    jti: str


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    token: str
    grant: SandboxGrant


def audience(agent_id: str) -> str:
    return AUDIENCE_PREFIX + agent_id


def issue_grant(
    key: rsa.RSAPrivateKey,
    issuer: str,
    *,
    agent_id: str,
    task_id: str,
    uid: str,
    clock: Clock,
    act: Act = Act.READ,
    ttl_seconds: float = GRANT_TTL_SECONDS,
) -> IssuedGrant:
    if not (agent_id and task_id and uid):
        raise ValueError("a sandbox grant needs an agent, a task and a uid")
    now = clock.wall()
    grant = SandboxGrant(
        agent_id=agent_id,
        task_id=task_id,
        act=act,
        uid=uid,
        issuer=issuer,
        issued_at=round(now, 3),
        expires_at=float(math.floor(now + ttl_seconds)),
        jti=secrets.token_urlsafe(16),
    )
    payload = {
        "aud": audience(agent_id),
        "task": task_id,
        "act": act.value,
        "uid": uid,
        "iss": issuer,
        "iat": grant.issued_at,
        "exp": int(grant.expires_at),
        "jti": grant.jti,
        "typ": GRANT_TYPE,
    }
    headers = {"kid": key_id(key.public_key())}
    token = jwt.encode(payload, key, algorithm="RS256", headers=headers)
    return IssuedGrant(token, grant)


def grant_key_id(token: str) -> str:
    """The `kid` the grant says it was signed with (unverified: only to pick a key), refusing
    any algorithm but RS256 first."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise GrantError(GrantRefusal.MALFORMED)
    try:
        header = unverified_header(token)
    except TokenError as error:
        raise GrantError(_from_token_refusal(error.reason)) from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise GrantError(GrantRefusal.UNKNOWN_KEY)
    return kid


def verify_grant(
    token: str,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    agent_id: str,
    task_id: str | None,
    clock: Clock,
    act: Act = Act.READ,
    issuer: str | None = None,
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
) -> SandboxGrant:
    """The grant's claims if it lets its bearer do `act` on `task_id` on agent `agent_id`
    (`task_id` None: a grant for any task of this agent), else GrantError.

    `keys` maps key ids to the cluster's public keys; `issuer`, when given, must be the
    grant's `iss` exactly."""
    kid = grant_key_id(token)
    key = keys.get(kid)
    if key is None:
        raise GrantError(GrantRefusal.UNKNOWN_KEY)
    try:
        payload = decode_rs256(
            token, key, required=_REQUIRED, audience=audience(agent_id), issuer=issuer
        )
    except TokenError as error:
        raise GrantError(_from_token_refusal(error.reason)) from None
    grant = _grant_from(payload)
    now = clock.wall()
    if now > grant.expires_at + leeway_seconds:
        raise GrantError(GrantRefusal.EXPIRED)
    if grant.issued_at > now + leeway_seconds:
        raise GrantError(GrantRefusal.NOT_YET_VALID)
    if task_id is not None and grant.task_id != task_id:
        raise GrantError(GrantRefusal.WRONG_TASK)
    if grant.act is not act:
        raise GrantError(GrantRefusal.WRONG_ACT)
    return grant


def _grant_from(payload: Mapping[str, Any]) -> SandboxGrant:
    if payload.get("typ") != GRANT_TYPE:
        raise GrantError(GrantRefusal.BAD_TYPE)
    strings = {name: payload[name] for name in ("aud", "task", "act", "uid", "iss", "jti")}
    if not all(isinstance(value, str) and value for value in strings.values()):
        raise GrantError(GrantRefusal.MALFORMED)
    iat, exp = payload["iat"], payload["exp"]
    if not (is_number(iat) and is_number(exp)):
        raise GrantError(GrantRefusal.MALFORMED)
    try:
        act = Act(strings["act"])
    except ValueError:
        raise GrantError(GrantRefusal.WRONG_ACT) from None
    return SandboxGrant(
        agent_id=strings["aud"].removeprefix(AUDIENCE_PREFIX),
        task_id=strings["task"],
        act=act,
        uid=strings["uid"],
        issuer=strings["iss"],
        issued_at=float(iat),
        expires_at=float(exp),
        jti=strings["jti"],
    )


_REFUSALS = {
    TokenRefusal.ALG_NOT_ALLOWED: GrantRefusal.ALG_NOT_ALLOWED,
    TokenRefusal.BAD_SIGNATURE: GrantRefusal.BAD_SIGNATURE,
    TokenRefusal.BAD_AUDIENCE: GrantRefusal.WRONG_AGENT,
    TokenRefusal.BAD_ISSUER: GrantRefusal.BAD_ISSUER,
    TokenRefusal.MISSING_CLAIM: GrantRefusal.MISSING_CLAIM,
}


def _from_token_refusal(reason: TokenRefusal) -> GrantRefusal:
    return _REFUSALS.get(reason, GrantRefusal.MALFORMED)
