"""Checks the JWT a service account signs with its own key to log in (DC/OS's service login).

The account sends `{"uid": ..., "token": <JWT>}` to `POST /acs/api/v1/auth/login`, the JWT
being `{"uid", "exp"}` RS256-signed with the private key whose public half was registered for
that uid. Tessera accepts it only if the signature matches the registered key, `uid` is the
login's uid, it has not expired and expires at most `max_ahead_seconds` from now (so a leaked
login JWT is short-lived), and, when it carries a `jti`, that id was not used before (replay
cache, bounded, entries forgotten once their JWT expires). An `aud`, if present, must be
`tessera`. Time comes from an injected Clock; refusals are `TokenError`s. No I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.clock import Clock
from tessera.security.tokens import (
    AUDIENCE,
    MAX_TOKEN_CHARS,
    TokenError,
    TokenRefusal,
    decode_rs256,
    is_number,
    unverified_header,
)


@dataclass(frozen=True, slots=True)
class ServiceLoginPolicy:
    max_ahead_seconds: float = 300.0
    leeway_seconds: float = 30.0
    replay_capacity: int = 100_000


@dataclass(frozen=True, slots=True)
class ServiceLogin:
    uid: str
    expires_at: float
    jti: str | None


class ServiceLoginVerifier:
    def __init__(self, clock: Clock, policy: ServiceLoginPolicy = ServiceLoginPolicy()) -> None:
        self._clock = clock
        self._policy = policy
        # (uid, jti) -> exp; keyed by uid too, so one account cannot burn another's ids
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def verify(self, login_token: str, uid: str, public_key: rsa.RSAPublicKey) -> ServiceLogin:
        """The login, if `login_token` proves `uid` holds the key; TokenError otherwise."""
        if not isinstance(login_token, str) or len(login_token) > MAX_TOKEN_CHARS:
            raise TokenError(TokenRefusal.MALFORMED)
        unverified_header(login_token)
        payload = decode_rs256(
            login_token, public_key, required=["uid", "exp"], audience=None, issuer=None
        )
        login = _login_from(payload)
        if login.uid != uid:
            raise TokenError(TokenRefusal.UID_MISMATCH)
        now = self._clock.wall()
        leeway = self._policy.leeway_seconds
        if now > login.expires_at + leeway:
            raise TokenError(TokenRefusal.EXPIRED)
        if login.expires_at > now + self._policy.max_ahead_seconds + leeway:
            raise TokenError(TokenRefusal.EXPIRES_TOO_LATE)
        if login.jti is not None:
            self._consume(login, now)
        return login

    def remembered(self) -> int:
        """How many login JWT ids are held against replay."""
        return len(self._seen)

    def _consume(self, login: ServiceLogin, now: float) -> None:
        self._forget_expired(now)
        key = (login.uid, login.jti or "")
        if key in self._seen:
            raise TokenError(TokenRefusal.REPLAYED)
        self._seen[key] = login.expires_at
        if len(self._seen) > self._policy.replay_capacity:
            # Only holders of registered keys can fill it; the oldest ids expire first anyway.
            self._seen.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        horizon = now - self._policy.leeway_seconds
        while self._seen:
            key, expires_at = next(iter(self._seen.items()))
            if expires_at >= horizon:
                return
            del self._seen[key]


def _login_from(payload: Mapping[str, Any]) -> ServiceLogin:
    uid, exp, jti = payload["uid"], payload["exp"], payload.get("jti")
    if not (isinstance(uid, str) and uid and is_number(exp)):
        raise TokenError(TokenRefusal.MALFORMED)
    if jti is not None and not (isinstance(jti, str) and jti):
        raise TokenError(TokenRefusal.MALFORMED)
    aud = payload.get("aud", AUDIENCE)
    if aud != AUDIENCE and not (isinstance(aud, list) and AUDIENCE in aud):
        # meant for another service that trusts the same key
        raise TokenError(TokenRefusal.BAD_AUDIENCE)
    return ServiceLogin(uid=uid, expires_at=float(exp), jti=jti)
