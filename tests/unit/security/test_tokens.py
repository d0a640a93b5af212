"""Auth tokens: every forged, stale or foreign token is a TokenError with the right reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.security.tokens import (
    Claims,
    Revocations,
    TokenError,
    TokenIssuer,
    TokenPolicy,
    TokenRefusal,
    TokenVerifier,
    jwks_document,
    key_id,
    new_signing_key,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_pem,
    public_key_to_pem,
)
from tessera.testing.clock import FakeClock

CLUSTER = "cluster-1"
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_signing_key(2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_signing_key(2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=T0)


@pytest.fixture
def revocations() -> Revocations:
    return Revocations()


@pytest.fixture
def issuer(key: rsa.RSAPrivateKey, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(key, CLUSTER, clock)


@pytest.fixture
def verifier(key: rsa.RSAPrivateKey, clock: FakeClock, revocations: Revocations) -> TokenVerifier:
    return TokenVerifier([key.public_key()], CLUSTER, clock, revocations)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def _payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "uid": "alice",
        "iss": CLUSTER,
        "aud": "tessera",
        "iat": T0,
        "exp": int(T0 + 3600),
        "jti": "j-1",
        "typ": "user",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def _signed(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str | None = None) -> str:
    kid = kid or key_id(key.public_key())
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def _refusal(verifier: TokenVerifier, token: Any) -> TokenRefusal:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_round_trip_carries_every_claim(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    issued = issuer.issue("alice", "user")
    claims = verifier.verify(issued.token)
    assert claims == issued.claims
    assert claims == Claims(
        uid="alice",
        typ="user",
        issuer=CLUSTER,
        issued_at=T0,
        expires_at=T0 + 8 * 3600,
        jti=claims.jti,
    )
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "RS256" and header["typ"] == "JWT"
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(payload) == {"uid", "iss", "aud", "iat", "exp", "jti", "typ"}
    assert payload["aud"] == "tessera"


def test_lifetimes_by_type_and_policy(key: rsa.RSAPrivateKey, clock: FakeClock) -> None:
    default = TokenIssuer(key, CLUSTER, clock)
    assert default.issue("ci", "service").claims.expires_at == T0 + 3600
    short = TokenIssuer(key, CLUSTER, clock, TokenPolicy(user_ttl_seconds=60))
    assert short.issue("alice", "user").claims.expires_at == T0 + 60
    assert short.issue("alice", "user", ttl_seconds=5).claims.expires_at == T0 + 5
    assert default.issue("a", "user").claims.jti != default.issue("a", "user").claims.jti


def test_expired_beyond_leeway(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token = issuer.issue("alice", "user", ttl_seconds=60).token
    clock.advance(60 + 30)  # exactly at the leeway's end: still accepted
    verifier.verify(token)
    clock.advance(1)
    assert _refusal(verifier, token) == TokenRefusal.EXPIRED  # from the cache
    assert _refusal(verifier, token) == TokenRefusal.EXPIRED  # and cold


def test_not_yet_valid(key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    ahead = TokenIssuer(key, CLUSTER, FakeClock(wall=T0 + 120))
    assert _refusal(verifier, ahead.issue("alice", "user").token) == TokenRefusal.NOT_YET_VALID
    within_leeway = TokenIssuer(key, CLUSTER, FakeClock(wall=T0 + 20))
    verifier.verify(within_leeway.issue("alice", "user").token)
    nbf = _signed(key, _payload(nbf=T0 + 600))
    assert _refusal(verifier, nbf) == TokenRefusal.NOT_YET_VALID


def test_revoke_before_refuses_older_tokens_only(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock, revocations: Revocations
) -> None:
    old = issuer.issue("alice", "user").token
    bob = issuer.issue("bob", "user").token
    verifier.verify(old)  # now cached
    clock.advance(0.4)
    revocations.revoke_before("alice", clock.wall())
    assert _refusal(verifier, old) == TokenRefusal.REVOKED
    assert _refusal(verifier, old) == TokenRefusal.REVOKED
    verifier.verify(bob)
    clock.advance(0.2)  # a new login within the same second is not caught by the revocation
    verifier.verify(issuer.issue("alice", "user").token)
    revocations.revoke_before("alice", T0 - 100)  # never moves backwards
    assert _refusal(verifier, old) == TokenRefusal.REVOKED


def test_denied_jti_even_when_cached(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock, revocations: Revocations
) -> None:
    issued = issuer.issue("alice", "user")
    other = issuer.issue("alice", "user")
    verifier.verify(issued.token)
    verifier.verify(other.token)
    assert verifier.cached() == 2
    revocations.deny(issued.claims.jti, issued.claims.expires_at)
    assert _refusal(verifier, issued.token) == TokenRefusal.REVOKED
    assert verifier.cached() == 1
    verifier.verify(other.token)
    revocations.forget_expired(clock.wall())
    assert _refusal(verifier, issued.token) == TokenRefusal.REVOKED
    revocations.forget_expired(issued.claims.expires_at + 30)  # still within the leeway
    assert _refusal(verifier, issued.token) == TokenRefusal.REVOKED
    revocations.forget_expired(issued.claims.expires_at + 31)
    assert revocations.is_revoked(issued.claims) is False


def test_cache_is_bounded_and_least_recent_goes(
    key: rsa.RSAPrivateKey, issuer: TokenIssuer, clock: FakeClock
) -> None:
    verifier = TokenVerifier([key.public_key()], CLUSTER, clock, Revocations(), cache_size=3)
    tokens = [issuer.issue(f"u{i}", "user").token for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert verifier.cached() == 3
    for token in tokens:  # evicted ones verify cold again
        verifier.verify(token)


def test_wrong_audience_and_issuer(key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    assert _refusal(verifier, _signed(key, _payload(aud="other"))) == TokenRefusal.BAD_AUDIENCE
    listed = _signed(key, _payload(aud=["tessera", "x"]))
    assert _refusal(verifier, listed) == TokenRefusal.BAD_AUDIENCE
    foreign = _signed(key, _payload(iss="cluster-2"))
    assert _refusal(verifier, foreign) == TokenRefusal.BAD_ISSUER


@pytest.mark.parametrize("claim", ["uid", "iss", "aud", "iat", "exp", "jti", "typ"])
def test_every_claim_is_required(
    key: rsa.RSAPrivateKey, verifier: TokenVerifier, claim: str
) -> None:
    token = _signed(key, _payload(**{claim: None}))
    assert _refusal(verifier, token) == TokenRefusal.MISSING_CLAIM


@pytest.mark.parametrize(
    "overrides",
    [{"uid": ""}, {"uid": 7}, {"exp": "soon"}, {"exp": True}, {"iat": [1]}, {"jti": 3}],
)
def test_claims_of_the_wrong_type(
    key: rsa.RSAPrivateKey, verifier: TokenVerifier, overrides: dict[str, Any]
) -> None:
    assert _refusal(verifier, _signed(key, _payload(**overrides))) == TokenRefusal.MALFORMED


def test_other_token_types_are_not_auth_tokens(
    key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    grant = _signed(key, _payload(typ="sandbox-grant"))
    assert _refusal(verifier, grant) == TokenRefusal.BAD_TYPE


def test_alg_none(verifier: TokenVerifier) -> None:
    unsigned = _segments({"alg": "none", "typ": "JWT"}, _payload()) + "."
    assert _refusal(verifier, unsigned) == TokenRefusal.ALG_NOT_ALLOWED
    for alg in ("None", "NONE", "RS512", "ES256", "PS256"):
        forged = _segments({"alg": alg, "typ": "JWT"}, _payload()) + ".c2ln"
        assert _refusal(verifier, forged) == TokenRefusal.ALG_NOT_ALLOWED


def test_hs256_signed_with_the_public_key(key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    public_pem = public_key_to_pem(key.public_key())
    kid = key_id(key.public_key())
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": kid}, _payload())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert _refusal(verifier, signing_input + "." + _b64(mac)) == TokenRefusal.ALG_NOT_ALLOWED


def test_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, _, signature = issuer.issue("alice", "user").token.split(".")
    forged = _b64(json.dumps(_payload(uid="admin")).encode())
    token = f"{header}.{forged}.{signature}"
    assert _refusal(verifier, token) == TokenRefusal.BAD_SIGNATURE


def test_signed_by_another_key(
    other_key: rsa.RSAPrivateKey, key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    assert _refusal(verifier, _signed(other_key, _payload())) == TokenRefusal.BAD_SIGNATURE
    # even when it claims our key id
    borrowed = _signed(other_key, _payload(), kid=key_id(key.public_key()))
    assert _refusal(verifier, borrowed) == TokenRefusal.BAD_SIGNATURE
    no_kid = jwt.encode(_payload(), key, algorithm="RS256")
    assert _refusal(verifier, no_kid) == TokenRefusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "a.b.c",
        "...",
        "eyJhbGciOiJSUzI1NiJ9",
        _b64(b"[1,2]") + ".e30.c2ln",
        _b64(b'{"alg":"RS256","kid":["k"]}') + ".e30.c2ln",
        _b64(b'{"alg":"RS256","crit":["exp"]}') + ".e30.c2ln",
        "\u00e9\u00e9.\u00e9.\u00e9",
        "a" * 100_000,
        None,
        42,
        b"bytes.are.not",
    ],
)
def test_garbage_is_malformed(verifier: TokenVerifier, garbage: Any) -> None:
    assert _refusal(verifier, garbage) == TokenRefusal.MALFORMED


def test_garbage_with_a_valid_header_shape(key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    kid = key_id(key.public_key())
    header = _b64(json.dumps({"alg": "RS256", "kid": kid}).encode())
    for token in (f"{header}.!!!.sig", f"{header}.e30.***"):
        assert _refusal(verifier, token) == TokenRefusal.MALFORMED
    for token in (f"{header}.e30.", f"{header}.{_b64(b'null')}.c2ln", f"{header}.e30.c2ln"):
        assert _refusal(verifier, token) == TokenRefusal.BAD_SIGNATURE


def test_pem_round_trips(key: rsa.RSAPrivateKey) -> None:
    again = private_key_from_pem(private_key_to_pem(key))
    assert again.private_numbers() == key.private_numbers()
    locked = private_key_to_pem(key, password=b"cluster-key")
    assert b"ENCRYPTED" in locked
    assert private_key_from_pem(locked, b"cluster-key").private_numbers() == key.private_numbers()
    public = public_key_from_pem(public_key_to_pem(key.public_key()).decode())
    assert public.public_numbers() == key.public_key().public_numbers()


def test_weak_or_foreign_keys_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError):
        public_key_from_pem(public_key_to_pem(small.public_key()))
    with pytest.raises(ValueError):
        public_key_from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError):
        new_signing_key(1024)


def test_jwks_shape_and_pyjwk_verifies(key: rsa.RSAPrivateKey) -> None:
    document = jwks_document([key.public_key()])
    assert list(document) == ["keys"]
    (entry,) = document["keys"]
    assert set(entry) == {"kty", "alg", "use", "kid", "n", "e"}
    assert entry["kty"] == "RSA" and entry["alg"] == "RS256" and entry["use"] == "sig"
    assert entry["e"] == "AQAB"
    assert entry["kid"] == key_id(key.public_key())
    json.dumps(document)
    # PyJWT checks times against the real clock here
    token = TokenIssuer(key, CLUSTER, FakeClock()).issue("alice", "user").token
    loaded = jwt.PyJWKSet.from_dict(document)[entry["kid"]]
    payload = jwt.decode(token, loaded, algorithms=["RS256"], audience="tessera", issuer=CLUSTER)
    assert payload["uid"] == "alice"


def test_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 §3.1's example key and thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = rsa.RSAPublicNumbers(
        65537, int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    ).public_key()
    assert key_id(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rotation_accepts_tokens_of_every_listed_key(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    both = TokenVerifier([key.public_key(), other_key.public_key()], CLUSTER, clock, Revocations())
    for signer in (key, other_key):
        assert both.verify(TokenIssuer(signer, CLUSTER, clock).issue("a", "user").token).uid == "a"
