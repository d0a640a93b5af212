"""Reads the `Authorization` header: which Tessera token a request carries, or why none.

Three forms carry a token. `token=<jwt>` is DC/OS's (the `marathon` and `dcos-metronome`
Python clients send it); `Bearer <jwt>` is the standard one; HTTP Basic is accepted only when
its password field is itself a token, because the `marathon` client's SSE stream sends basic
auth and nothing else. A real password is never accepted there: checking one costs an argon2
hash per request, and passwords belong to the login endpoint alone. Anything else (an unknown
scheme, an empty or non-JWT token, two credentials, non-ASCII, an over-long header) is refused
with a reason for the log. The token is not verified here (see tokens.py). Pure.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

# Tokens are ~700 characters; real headers stay far below; a 16 KiB one is an attack.
MAX_HEADER_CHARS = 8192
# Three base64url segments: the compact JWS serialisation, nothing more.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")

Scheme = Literal["token", "bearer", "basic"]


class HeaderRefusal(StrEnum):
    MISSING = "missing"
    TOO_LONG = "too_long"
    NOT_ASCII = "not_ascii"
    UNKNOWN_SCHEME = "unknown_scheme"
    EMPTY_TOKEN = "empty_token"
    NOT_A_TOKEN = "not_a_token"
    SEVERAL_CREDENTIALS = "several_credentials"
    BAD_BASIC = "bad_basic"
    BASIC_WITHOUT_TOKEN = "basic_without_token"


@dataclass(frozen=True, slots=True)
class PresentedToken:
    token: str
    scheme: Scheme


@dataclass(frozen=True, slots=True)
class Refused:
    reason: HeaderRefusal


def parse_authorization(header: str | None) -> PresentedToken | Refused:
    if header is None or not header.strip():
        return Refused(HeaderRefusal.MISSING)
    if len(header) > MAX_HEADER_CHARS:
        return Refused(HeaderRefusal.TOO_LONG)
    if not _VISIBLE_ASCII.fullmatch(header):
        return Refused(HeaderRefusal.NOT_ASCII)
    value = header.strip()
    if "," in value:
        return Refused(HeaderRefusal.SEVERAL_CREDENTIALS)
    if value.startswith("token="):
        return _token(value.removeprefix("token="), "token")
    scheme, _, rest = value.partition(" ")
    # RFC 9110: the scheme is case-insensitive.
    if scheme.lower() == "bearer":
        return _token(rest.strip(), "bearer")
    if scheme.lower() == "basic":
        return _basic(rest.strip())
    return Refused(HeaderRefusal.UNKNOWN_SCHEME)


def _token(candidate: str, scheme: Scheme) -> PresentedToken | Refused:
    if not candidate:
        return Refused(HeaderRefusal.EMPTY_TOKEN)
    if " " in candidate or "=" in candidate:
        return Refused(HeaderRefusal.SEVERAL_CREDENTIALS)
    if not _JWT_SHAPE.fullmatch(candidate):
        return Refused(HeaderRefusal.NOT_A_TOKEN)
    return PresentedToken(token=candidate, scheme=scheme)


def _basic(encoded: str) -> PresentedToken | Refused:
    if not encoded or " " in encoded:
        return Refused(HeaderRefusal.BAD_BASIC)
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return Refused(HeaderRefusal.BAD_BASIC)
    _user, colon, password = decoded.partition(":")
    if not colon:
        return Refused(HeaderRefusal.BAD_BASIC)
    # The user part is ignored: the token names the principal. The password must look like
    # a token; anything else is a password and is refused without being looked at further.
    if not _JWT_SHAPE.fullmatch(password):
        return Refused(HeaderRefusal.BASIC_WITHOUT_TOKEN)
    return PresentedToken(token=password, scheme="basic")
