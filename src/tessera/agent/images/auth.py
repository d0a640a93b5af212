"""Registry authentication: `WWW-Authenticate` challenges, Basic, and Bearer tokens.

A pull starts without credentials (or with what worked last time for that registry). On a
401 the challenge decides: `Basic` sends the credential; `Bearer realm=…,service=…,scope=…`
asks the realm for a token (with the credential as Basic auth when there is one, anonymously
otherwise), caches it per realm, service, scope and credential until it expires, and the
request is sent again. Tokens default to 60 s, so a long pull meets a 401 halfway; the
caller then authenticates again, once per request (`distribution`'s token spec).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tessera.agent.images.credentials import Credential
from tessera.agent.images.errors import INVALID, UNAUTHORIZED, PullFailed
from tessera.clock import Clock

# Tokens are renewed this long before they say they expire (clock skew, slow requests).
_EXPIRY_MARGIN = 10.0
_DEFAULT_EXPIRY = 60.0
_TOKEN_BODY_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "basic", "bearer", …
    params: Mapping[str, str]


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given `WWW-Authenticate` values (RFC 7235: a header may hold
    several, parameters are `name=token` or `name="quoted, with \\"escapes\\""`)."""
    challenges: list[Challenge] = []
    for header in headers:
        challenges.extend(_parse_one_header(header))
    return challenges


def _parse_one_header(text: str) -> list[Challenge]:
    found: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    position = 0
    while position < len(text):
        if text[position] in " \t,":
            position += 1
            continue
        word, position = _read_token(text, position)
        if not word:  # a stray character: skip it rather than loop forever
            position += 1
            continue
        after = _skip_spaces(text, position)
        if after < len(text) and text[after] == "=" and scheme is not None:
            value, position = _read_value(text, _skip_spaces(text, after + 1))
            params[word.lower()] = value
            continue
        if scheme is not None:
            found.append(Challenge(scheme, params))
        scheme, params = word.lower(), {}
    if scheme is not None:
        found.append(Challenge(scheme, params))
    return found


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t":
        position += 1
    return position


def _read_token(text: str, position: int) -> tuple[str, int]:
    start = position
    while position < len(text) and text[position] not in ' \t,="':
        position += 1
    return text[start:position], position


def _read_value(text: str, position: int) -> tuple[str, int]:
    if position >= len(text) or text[position] != '"':
        return _read_token(text, position)
    characters: list[str] = []
    position += 1
    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text):
            characters.append(text[position + 1])
            position += 2
            continue
        if character == '"':
            return "".join(characters), position + 1
        characters.append(character)
        position += 1
    return "".join(characters), position


def basic_header(credential: Credential) -> str:
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class TokenCache:
    """Bearer tokens of the whole store, by realm, service, scope and credential, plus the
    last challenge each registry sent (so later pulls skip the first 401)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}
        self.challenges: dict[str, Challenge] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires = entry
        if self._clock.monotonic() >= expires:
            del self._tokens[key]
            return None
        return token

    def put(self, key: tuple[str, str, str, str], token: str, lifetime: float) -> None:
        expires = self._clock.monotonic() + max(lifetime - _EXPIRY_MARGIN, 1.0)
        self._tokens[key] = (token, expires)

    def drop(self, key: tuple[str, str, str, str], token: str) -> None:
        entry = self._tokens.get(key)
        if entry is not None and entry[0] == token:
            del self._tokens[key]


class Authorizer:
    """The `Authorization` header for one repository on one registry, for one pull."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        cache: TokenCache,
        registry: str,
        repository: str,
        credential: Credential | None,
        credential_id: str,
        plain_http_allowed: bool,
        image: str,
    ) -> None:
        self._client = client
        self._cache = cache
        self._registry = registry
        self._scope = f"repository:{repository}:pull"
        self._credential = credential
        self._credential_id = credential_id
        self._plain_http_allowed = plain_http_allowed
        self._image = image
        self._header: str | None = None
        self._token_key: tuple[str, str, str, str] | None = None
        # True once credentials went to the registry or its token service: the pull then
        # counts as made with them (who may use the cached image, pitfall 14).
        self.used_credential = False
        self._prime()

    @property
    def header(self) -> str | None:
        return self._header

    def _prime(self) -> None:
        challenge = self._cache.challenges.get(self._registry)
        if challenge is None:
            return
        if challenge.scheme == "basic" and self._credential is not None:
            self._header = basic_header(self._credential)
            self.used_credential = True
        elif challenge.scheme == "bearer":
            key = self._key(challenge)
            token = self._cache.get(key)
            if token is not None:
                self._header, self._token_key = f"Bearer {token}", key
                self.used_credential = self._credential is not None

    def _key(self, challenge: Challenge) -> tuple[str, str, str, str]:
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        return (realm, service, self._scope, self._credential_id)

    async def answer(self, headers: Iterable[str]) -> None:
        """Act on a 401's challenges: set a new header, or raise PullFailed."""
        challenges = parse_challenges(headers)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            self._cache.challenges[self._registry] = bearer
            await self._fetch_token(bearer)
        elif basic is not None:
            self._cache.challenges[self._registry] = basic
            if self._credential is None:
                raise self.refused()
            if self._header is not None and self._header.startswith("Basic "):
                raise self.refused()  # the credential already went with this request
            self._header = basic_header(self._credential)
            self.used_credential = True
        else:
            schemes = ", ".join(c.scheme for c in challenges) or "none"
            raise PullFailed(
                UNAUTHORIZED,
                f"cannot pull {self._image}: the registry asks for an unsupported "
                f"authentication scheme ({schemes})",
            )

    def refused(self, note: str | None = None) -> PullFailed:
        """The error for a registry that still says no."""
        if self._credential is None:
            cause = "the registry refused an anonymous pull (no credentials for it)"
        else:
            cause = f"the registry refused the credentials of {self._credential.username!r}"
        return PullFailed(
            UNAUTHORIZED, f"cannot pull {self._image}: {cause}" + (f"; {note}" if note else "")
        )

    async def _fetch_token(self, challenge: Challenge) -> None:
        key = self._key(challenge)
        if self._token_key == key and self._header is not None:
            # The token this request carried was refused (expired): forget it, get another.
            self._cache.drop(key, self._header.removeprefix("Bearer "))
        realm = challenge.params.get("realm")
        if not realm:
            raise PullFailed(INVALID, f"cannot pull {self._image}: Bearer challenge has no realm")
        url = httpx.URL(realm)
        if url.scheme != "https" and not (url.scheme == "http" and self._plain_http_allowed):
            raise PullFailed(
                INVALID,
                f"cannot pull {self._image}: the token service {realm} is not https "
                "(allowed only for registries in --insecure-registries)",
            )
        params: dict[str, str] = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        params["scope"] = challenge.params.get("scope") or self._scope
        headers = {}
        if self._credential is not None:
            headers["Authorization"] = basic_header(self._credential)
            self.used_credential = True
        response = await self._client.get(url, params=params, headers=headers)
        if response.status_code in (401, 403):
            raise self.refused(f"token service {realm} answered {response.status_code}")
        if response.status_code != 200:
            raise PullFailed(
                UNAUTHORIZED,
                f"cannot pull {self._image}: token service {realm} answered {response.status_code}",
            )
        token, lifetime = _read_token_answer(response.content[:_TOKEN_BODY_LIMIT])
        if token is None:
            raise PullFailed(
                UNAUTHORIZED, f"cannot pull {self._image}: token service {realm} sent no token"
            )
        self._cache.put(key, token, lifetime)
        self._header, self._token_key = f"Bearer {token}", key


def _read_token_answer(body: bytes) -> tuple[str | None, float]:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return None, 0.0
    if not isinstance(document, dict):
        return None, 0.0
    token = document.get("token") or document.get("access_token")
    expires = document.get("expires_in")
    lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 0.0
    return (token if isinstance(token, str) and token else None), (lifetime or _DEFAULT_EXPIRY)
