"""Sandbox grants: a grant opens one task's sandbox on one agent, for five minutes, and
every forged, foreign or stale one is refused with the right reason and status."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.security.grants import (
    GRANT_TTL_SECONDS,
    Act,
    GrantError,
    GrantRefusal,
    issue_grant,
    verify_grant,
)
from tessera.security.tokens import (
    Revocations,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    key_id,
    new_signing_key,
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


def keys_of(*private: rsa.RSAPrivateKey) -> dict[str, rsa.RSAPublicKey]:
    return {key_id(k.public_key()): k.public_key() for k in private}


def grant_for(key: rsa.RSAPrivateKey, clock: FakeClock, agent: str = "a1", task: str = "t1") -> str:
    return issue_grant(key, CLUSTER, agent_id=agent, task_id=task, uid="alice", clock=clock).token


def refusal(
    token: str, keys: dict[str, rsa.RSAPublicKey], clock: FakeClock, **kw: Any
) -> GrantError:
    args: dict[str, Any] = {"agent_id": "a1", "task_id": "t1", "clock": clock, **kw}
    with pytest.raises(GrantError) as caught:
        verify_grant(token, keys, **args)
    return caught.value


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_grant_opens_its_task_on_its_agent(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    issued = issue_grant(key, CLUSTER, agent_id="a1", task_id="t1", uid="alice", clock=clock)
    assert issued.grant.expires_at == T0 + GRANT_TTL_SECONDS
    grant = verify_grant(issued.token, keys_of(key), agent_id="a1", task_id="t1", clock=clock)
    assert (grant.agent_id, grant.task_id, grant.uid, grant.act) == ("a1", "t1", "alice", Act.READ)
    assert grant.issuer == CLUSTER
    # any task of this agent (the agent's /v1/info), and with the issuer pinned
    assert verify_grant(issued.token, keys_of(key), agent_id="a1", task_id=None, clock=clock)
    assert verify_grant(
        issued.token, keys_of(key), agent_id="a1", task_id="t1", clock=clock, issuer=CLUSTER
    )
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["aud"] == "agent:a1" and claims["task"] == "t1" and claims["act"] == "read"
    assert claims["exp"] - claims["iat"] == pytest.approx(300, abs=1)


def test_another_agents_grant_is_401(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    error = refusal(grant_for(key, clock, agent="a2"), keys_of(key), clock)
    assert (error.reason, error.status) == (GrantRefusal.WRONG_AGENT, 401)


def test_another_tasks_grant_is_403(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    error = refusal(grant_for(key, clock, task="t2"), keys_of(key), clock)
    assert (error.reason, error.status) == (GrantRefusal.WRONG_TASK, 403)


def test_expired_is_401_after_the_leeway(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    token = grant_for(key, clock)
    clock.advance(GRANT_TTL_SECONDS + 20)
    verify_grant(token, keys_of(key), agent_id="a1", task_id="t1", clock=clock)  # skew tolerated
    clock.advance(11)
    error = refusal(token, keys_of(key), clock)
    assert (error.reason, error.status) == (GrantRefusal.EXPIRED, 401)


def test_issued_in_the_future_is_refused(key: rsa.RSAPrivateKey) -> None:
    token = grant_for(key, FakeClock(wall=T0 + 120))
    assert refusal(token, keys_of(key), FakeClock(wall=T0)).reason is GrantRefusal.NOT_YET_VALID


def test_forged_with_another_key(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    forged = grant_for(other_key, clock)
    assert refusal(forged, keys_of(key), clock).reason is GrantRefusal.UNKNOWN_KEY
    # the attacker's token claiming our key id: the signature does not hold
    header = {"alg": "RS256", "typ": "JWT", "kid": key_id(key.public_key())}
    payload = jwt.decode(forged, options={"verify_signature": False})
    relabelled = jwt.encode(payload, other_key, algorithm="RS256", headers=header)
    error = refusal(relabelled, keys_of(key), clock)
    assert (error.reason, error.status) == (GrantRefusal.BAD_SIGNATURE, 401)


def test_tampered_claims(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    head, body, signature = grant_for(key, clock, task="t2").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["task"] = "t1"
    tampered = ".".join([head, b64(claims), signature])
    assert refusal(tampered, keys_of(key), clock).reason is GrantRefusal.BAD_SIGNATURE


def test_alg_none_and_hs256(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    payload = jwt.decode(grant_for(key, clock), options={"verify_signature": False})
    kid = key_id(key.public_key())
    unsigned = b64({"alg": "none", "kid": kid}) + "." + b64(payload) + "."
    assert refusal(unsigned, keys_of(key), clock).reason is GrantRefusal.ALG_NOT_ALLOWED
    hs = b64({"alg": "HS256", "kid": kid}) + "." + b64(payload) + ".c2ln"
    assert refusal(hs, keys_of(key), clock).reason is GrantRefusal.ALG_NOT_ALLOWED


def test_an_auth_token_is_not_a_grant_nor_a_grant_a_token(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    token = TokenIssuer(key, CLUSTER, clock).issue("alice", "user").token
    assert refusal(token, keys_of(key), clock).status == 401
    verifier = TokenVerifier([key.public_key()], CLUSTER, clock, Revocations())
    with pytest.raises(TokenError):
        verifier.verify(grant_for(key, clock))


def test_wrong_type_act_and_missing_claims(key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall=T0)
    good = jwt.decode(grant_for(key, clock), options={"verify_signature": False})
    headers = {"kid": key_id(key.public_key())}

    def signed(**changes: Any) -> str:
        payload = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return jwt.encode(payload, key, algorithm="RS256", headers=headers)

    assert refusal(signed(typ="user"), keys_of(key), clock).reason is GrantRefusal.BAD_TYPE
    wrong_act = refusal(signed(act="write"), keys_of(key), clock)
    assert (wrong_act.reason, wrong_act.status) == (GrantRefusal.WRONG_ACT, 403)
    assert refusal(signed(task=None), keys_of(key), clock).reason is GrantRefusal.MISSING_CLAIM
    assert refusal(signed(exp="soon"), keys_of(key), clock).reason is GrantRefusal.MALFORMED
    assert refusal(signed(aud=["agent:a1"]), keys_of(key), clock).status == 401
    assert refusal(signed(iss="other"), keys_of(key), clock, issuer=CLUSTER).reason is (
        GrantRefusal.BAD_ISSUER
    )
    unknown_kid = jwt.encode(good, key, algorithm="RS256", headers={"kid": "nope"})
    assert refusal(unknown_kid, keys_of(key), clock).reason is GrantRefusal.UNKNOWN_KEY
    no_kid = jwt.encode(good, key, algorithm="RS256")
    assert refusal(no_kid, keys_of(key), clock).reason is GrantRefusal.UNKNOWN_KEY


@pytest.mark.parametrize("junk", ["", "x", "a.b.c", "a" * 9000, "é.é.é", "..", "e30.e30.e30"])
def test_junk_is_malformed_never_a_crash(key: rsa.RSAPrivateKey, junk: str) -> None:
    clock = FakeClock(wall=T0)
    assert refusal(junk, keys_of(key), clock).status == 401


def test_issuing_needs_agent_task_and_uid(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        issue_grant(key, CLUSTER, agent_id="", task_id="t", uid="u", clock=FakeClock(wall=T0))
