"""The Authorization header: three ways to carry a token, everything else refused."""

from __future__ import annotations

import base64

import pytest

from tessera.security.credentials import (
    MAX_HEADER_CHARS,
    HeaderRefusal,
    PresentedToken,
    Refused,
    parse_authorization,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJ1aWQiOiJhbGljZSJ9.c2lnbmF0dXJl"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"token={JWT}", PresentedToken(JWT, "token")),
        (f"  token={JWT} ", PresentedToken(JWT, "token")),
        (f"Bearer {JWT}", PresentedToken(JWT, "bearer")),
        (f"bearer  {JWT}", PresentedToken(JWT, "bearer")),
        (f"BEARER {JWT}", PresentedToken(JWT, "bearer")),
        (_basic("alice", JWT), PresentedToken(JWT, "basic")),
        (_basic("", JWT), PresentedToken(JWT, "basic")),
        (_basic("a:b", JWT), Refused(HeaderRefusal.BASIC_WITHOUT_TOKEN)),
        (None, Refused(HeaderRefusal.MISSING)),
        ("", Refused(HeaderRefusal.MISSING)),
        ("   ", Refused(HeaderRefusal.MISSING)),
        ("foo", Refused(HeaderRefusal.UNKNOWN_SCHEME)),
        (f"Token {JWT}", Refused(HeaderRefusal.UNKNOWN_SCHEME)),
        (f"TOKEN={JWT}", Refused(HeaderRefusal.UNKNOWN_SCHEME)),
        (f"Digest {JWT}", Refused(HeaderRefusal.UNKNOWN_SCHEME)),
        (JWT, Refused(HeaderRefusal.UNKNOWN_SCHEME)),
        ("token=", Refused(HeaderRefusal.EMPTY_TOKEN)),
        ("Bearer", Refused(HeaderRefusal.EMPTY_TOKEN)),
        ("Bearer ", Refused(HeaderRefusal.EMPTY_TOKEN)),
        ("token=X", Refused(HeaderRefusal.NOT_A_TOKEN)),
        ("Bearer X", Refused(HeaderRefusal.NOT_A_TOKEN)),
        ("Bearer a.b", Refused(HeaderRefusal.NOT_A_TOKEN)),
        ("Bearer a.b.c.d", Refused(HeaderRefusal.NOT_A_TOKEN)),
        ("Bearer a.b.", Refused(HeaderRefusal.NOT_A_TOKEN)),
        ("token=a+b.c/d.e", Refused(HeaderRefusal.NOT_A_TOKEN)),
        (f"Bearer {JWT}, token={JWT}", Refused(HeaderRefusal.SEVERAL_CREDENTIALS)),
        (f"Bearer {JWT} {JWT}", Refused(HeaderRefusal.SEVERAL_CREDENTIALS)),
        (f"token={JWT} token={JWT}", Refused(HeaderRefusal.SEVERAL_CREDENTIALS)),
        (f"Bearer token={JWT}", Refused(HeaderRefusal.SEVERAL_CREDENTIALS)),
        (f"Bearer {JWT}\u00e9", Refused(HeaderRefusal.NOT_ASCII)),
        (f"Bearer\t{JWT}", Refused(HeaderRefusal.NOT_ASCII)),
        (f"Bearer {JWT}\r\nX: y", Refused(HeaderRefusal.NOT_ASCII)),
        ("Bearer \x00", Refused(HeaderRefusal.NOT_ASCII)),
        ("Bearer " + "a" * (16 * 1024), Refused(HeaderRefusal.TOO_LONG)),
        ("Basic", Refused(HeaderRefusal.BAD_BASIC)),
        ("Basic !!!", Refused(HeaderRefusal.BAD_BASIC)),
        ("Basic " + base64.b64encode(b"no-colon").decode(), Refused(HeaderRefusal.BAD_BASIC)),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), Refused(HeaderRefusal.BAD_BASIC)),
        ("Basic YWxpY2U6cHc", Refused(HeaderRefusal.BAD_BASIC)),  # missing padding
        (_basic("alice", "hunter2"), Refused(HeaderRefusal.BASIC_WITHOUT_TOKEN)),
        (_basic("alice", ""), Refused(HeaderRefusal.BASIC_WITHOUT_TOKEN)),
        (_basic(JWT, "x"), Refused(HeaderRefusal.BASIC_WITHOUT_TOKEN)),
    ],
)
def test_header_table(header: str | None, expected: PresentedToken | Refused) -> None:
    assert parse_authorization(header) == expected


def test_longest_accepted_header() -> None:
    long_jwt = "a" * 3000 + "." + "b" * 3000 + "." + "c" * 2000
    header = "token=" + long_jwt
    assert len(header) <= MAX_HEADER_CHARS
    assert parse_authorization(header) == PresentedToken(long_jwt, "token")
    assert parse_authorization(header + "c" * (MAX_HEADER_CHARS - len(header) + 1)) == Refused(
        HeaderRefusal.TOO_LONG
    )
