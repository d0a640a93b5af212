"""Service-account login JWTs: the account's own key, its own uid, short-lived, used once."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.security.service_login import ServiceLogin, ServiceLoginPolicy, ServiceLoginVerifier
from tessera.security.tokens import TokenError, TokenRefusal, new_signing_key
from tessera.testing.clock import FakeClock

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def account_key() -> rsa.RSAPrivateKey:
    return new_signing_key(2048)


@pytest.fixture(scope="module")
def stranger_key() -> rsa.RSAPrivateKey:
    return new_signing_key(2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=T0)


@pytest.fixture
def logins(clock: FakeClock) -> ServiceLoginVerifier:
    return ServiceLoginVerifier(clock)


def _login_jwt(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    payload: dict[str, Any] = {"uid": "ci", "exp": int(T0 + 30)}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256")


def _refusal(
    logins: ServiceLoginVerifier, token: Any, key: rsa.RSAPrivateKey, uid: str = "ci"
) -> TokenRefusal:
    with pytest.raises(TokenError) as caught:
        logins.verify(token, uid, key.public_key())
    return caught.value.reason


def test_dcos_shaped_login_jwt(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey
) -> None:
    # As dcos/dcos's test_iam.py signs it: {"uid", "exp": now + 30}, RS256, nothing else.
    login = logins.verify(_login_jwt(account_key), "ci", account_key.public_key())
    assert login == ServiceLogin(uid="ci", expires_at=T0 + 30, jti=None)
    # without a jti it may be reused until it expires (DC/OS behaviour, bounded by max_ahead)
    logins.verify(_login_jwt(account_key), "ci", account_key.public_key())


def test_wrong_key(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, stranger_key: rsa.RSAPrivateKey
) -> None:
    token = _login_jwt(stranger_key)
    assert _refusal(logins, token, account_key) == TokenRefusal.BAD_SIGNATURE


def test_uid_must_be_the_login_uid(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey
) -> None:
    token = _login_jwt(account_key, uid="admin")
    assert _refusal(logins, token, account_key) == TokenRefusal.UID_MISMATCH


def test_required_claims_and_types(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey
) -> None:
    for claims in ({"uid": None}, {"exp": None}):
        token = _login_jwt(account_key, **claims)
        assert _refusal(logins, token, account_key) == TokenRefusal.MISSING_CLAIM
    for claims in ({"uid": 5}, {"exp": "later"}, {"jti": 12}, {"jti": ""}):
        token = _login_jwt(account_key, **claims)
        assert _refusal(logins, token, account_key) == TokenRefusal.MALFORMED


def test_expiry_window(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    too_late = _login_jwt(account_key, exp=int(T0 + 300 + 31))
    assert _refusal(logins, too_late, account_key) == TokenRefusal.EXPIRES_TOO_LATE
    logins.verify(_login_jwt(account_key, exp=int(T0 + 300)), "ci", account_key.public_key())
    stale = _login_jwt(account_key, exp=int(T0 - 31))
    assert _refusal(logins, stale, account_key) == TokenRefusal.EXPIRED
    token = _login_jwt(account_key)
    clock.advance(61)
    assert _refusal(logins, token, account_key) == TokenRefusal.EXPIRED


def test_max_ahead_is_configurable(clock: FakeClock, account_key: rsa.RSAPrivateKey) -> None:
    strict = ServiceLoginVerifier(clock, ServiceLoginPolicy(max_ahead_seconds=10, leeway_seconds=0))
    token = _login_jwt(account_key, exp=int(T0 + 11))
    assert _refusal(strict, token, account_key) == TokenRefusal.EXPIRES_TOO_LATE


def test_replayed_jti(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    token = _login_jwt(account_key, jti="once")
    assert logins.verify(token, "ci", account_key.public_key()).jti == "once"
    assert _refusal(logins, token, account_key) == TokenRefusal.REPLAYED
    # a fresh JWT reusing the id is a replay too while the first is alive
    again = _login_jwt(account_key, jti="once", exp=int(T0 + 60))
    assert _refusal(logins, again, account_key) == TokenRefusal.REPLAYED


def test_jti_of_one_account_does_not_block_another(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, stranger_key: rsa.RSAPrivateKey
) -> None:
    logins.verify(_login_jwt(account_key, jti="1"), "ci", account_key.public_key())
    other = _login_jwt(stranger_key, uid="deploy", jti="1")
    assert logins.verify(other, "deploy", stranger_key.public_key()).uid == "deploy"


def test_a_refused_login_does_not_burn_its_jti(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, stranger_key: rsa.RSAPrivateKey
) -> None:
    forged = _login_jwt(stranger_key, jti="mine")
    assert _refusal(logins, forged, account_key) == TokenRefusal.BAD_SIGNATURE
    logins.verify(_login_jwt(account_key, jti="mine"), "ci", account_key.public_key())


def test_replay_cache_forgets_expired_and_is_bounded(
    clock: FakeClock, account_key: rsa.RSAPrivateKey
) -> None:
    logins = ServiceLoginVerifier(clock, ServiceLoginPolicy(replay_capacity=3))
    public = account_key.public_key()
    for i in range(5):
        logins.verify(_login_jwt(account_key, jti=f"j{i}"), "ci", public)
    assert logins.remembered() == 3
    token = _login_jwt(account_key, jti="late", exp=int(T0 + 200))
    logins.verify(token, "ci", public)
    clock.advance(100)  # the exp=T0+30 ids are gone, "late" is still remembered
    logins.verify(_login_jwt(account_key, jti="next", exp=int(T0 + 150)), "ci", public)
    assert logins.remembered() == 2
    assert _refusal(logins, token, account_key) == TokenRefusal.REPLAYED


def test_audience_when_present(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey
) -> None:
    logins.verify(_login_jwt(account_key, aud="tessera"), "ci", account_key.public_key())
    elsewhere = _login_jwt(account_key, aud="vault")
    assert _refusal(logins, elsewhere, account_key) == TokenRefusal.BAD_AUDIENCE


@pytest.mark.parametrize(
    "token", ["", "x", "a.b.c", None, 3, "e30.e30.", "eyJhbGciOiJub25lIn0.e30.", "a" * 20_000]
)
def test_garbage(logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey, token: Any) -> None:
    assert _refusal(logins, token, account_key) in {
        TokenRefusal.MALFORMED,
        TokenRefusal.ALG_NOT_ALLOWED,
    }


def test_hs256_with_the_registered_public_key(
    logins: ServiceLoginVerifier, account_key: rsa.RSAPrivateKey
) -> None:
    forged = jwt.encode(
        {"uid": "ci", "exp": int(T0 + 30)},
        "a-secret-long-enough-for-hmac-sha256",
        algorithm="HS256",
    )
    assert _refusal(logins, forged, account_key) == TokenRefusal.ALG_NOT_ALLOWED
