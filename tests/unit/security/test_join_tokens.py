"""Join tokens: single and N uses, expiry on a fake clock, bindings, revocation, refusals that
tell a guesser nothing, and a stored form without secrets."""

from __future__ import annotations

import hmac
import json

import pytest

from tessera.security.join_tokens import JoinRefused, JoinTokenRegistry, parse_token
from tessera.testing.clock import FakeClock

HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=1_800_000_000.0)


@pytest.fixture
def registry(clock: FakeClock) -> JoinTokenRegistry:
    return JoinTokenRegistry(clock)


def test_a_token_reads_tsr1_id_secret(registry: JoinTokenRegistry) -> None:
    issued = registry.create(ttl=HOUR)
    prefix, token_id, secret = issued.token.split(".")
    assert prefix == "tsr1" and token_id == issued.info.token_id
    assert len(token_id) == 16 and len(secret) == 43  # 32 random bytes, base64url
    assert parse_token(issued.token) == (token_id, secret)
    assert registry.create(ttl=HOUR).token != issued.token


def test_a_single_use_token_admits_one_agent(registry: JoinTokenRegistry) -> None:
    issued = registry.create(ttl=HOUR)
    assert registry.consume(issued.token).token_id == issued.info.token_id
    with pytest.raises(JoinRefused, match="no uses left"):
        registry.consume(issued.token)


def test_an_n_use_token_admits_n_agents(registry: JoinTokenRegistry) -> None:
    issued = registry.create(ttl=HOUR, uses=3)
    assert [registry.consume(issued.token).uses_left for _ in range(3)] == [3, 2, 1]
    with pytest.raises(JoinRefused, match="no uses left"):
        registry.consume(issued.token)
    (info,) = registry.list_tokens()
    assert info.uses_left == 0


def test_a_token_expires(registry: JoinTokenRegistry, clock: FakeClock) -> None:
    issued = registry.create(ttl=HOUR, uses=5)
    clock.advance(HOUR - 1)
    registry.consume(issued.token)
    clock.advance(1)
    with pytest.raises(JoinRefused, match="expired"):
        registry.consume(issued.token)


def test_prune_drops_expired_and_used_up_tokens(
    registry: JoinTokenRegistry, clock: FakeClock
) -> None:
    used = registry.create(ttl=10 * HOUR)
    registry.consume(used.token)
    expiring = registry.create(ttl=HOUR)
    kept = registry.create(ttl=10 * HOUR)
    clock.advance(HOUR)
    assert sorted(registry.prune()) == sorted([used.info.token_id, expiring.info.token_id])
    assert [i.token_id for i in registry.list_tokens()] == [kept.info.token_id]


def test_a_revoked_token_is_unknown(registry: JoinTokenRegistry) -> None:
    issued = registry.create(ttl=HOUR, uses=2)
    assert registry.revoke(issued.info.token_id)
    assert not registry.revoke(issued.info.token_id)
    with pytest.raises(JoinRefused, match="unknown token id or wrong secret"):
        registry.consume(issued.token)


def test_unknown_ids_and_wrong_secrets_are_refused_alike(
    registry: JoinTokenRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = registry.create(ttl=HOUR, uses=2)
    _, token_id, secret = issued.token.split(".")
    wrong_secret = f"tsr1.{token_id}.{'A' * 43}"
    unknown_id = f"tsr1.{'0' * 16}.{secret}"
    compared: list[tuple[str, str]] = []
    real_compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # join_tokens calls it through the module
    messages = []
    for attempt in (wrong_secret, unknown_id):
        with pytest.raises(JoinRefused) as refused:
            registry.consume(attempt)
        messages.append(refused.value.reason.split(" (")[0])
    assert messages == ["unknown token id or wrong secret"] * 2
    assert len(compared) == 2  # both went through the constant-time comparison
    assert registry.consume(issued.token).uses_left == 2  # failures spent no use


@pytest.mark.parametrize(
    "text", ["", "tsr1", "tsr2.0123456789abcdef." + "A" * 43, "tsr1.XYZ.secret", "a.b.c.d"]
)
def test_malformed_tokens_are_refused(registry: JoinTokenRegistry, text: str) -> None:
    with pytest.raises(JoinRefused, match="not a join token"):
        registry.consume(text)


def test_a_token_bound_to_a_host_and_attributes_admits_only_that_agent(
    registry: JoinTokenRegistry,
) -> None:
    issued = registry.create(ttl=HOUR, uses=5, hostname="node7", attributes={"rack": "r1"})
    with pytest.raises(JoinRefused, match="for host 'node7'"):
        registry.consume(issued.token, hostname="node8", attributes={"rack": "r1"})
    with pytest.raises(JoinRefused, match="rack=r1"):
        registry.consume(issued.token, hostname="node7", attributes={"rack": "r2"})
    with pytest.raises(JoinRefused, match="rack=r1"):
        registry.consume(issued.token, hostname="node7")
    info = registry.consume(issued.token, hostname="node7", attributes={"rack": "r1", "ssd": "y"})
    assert info.hostname == "node7" and info.uses_left == 5


def test_bad_parameters_are_refused(registry: JoinTokenRegistry) -> None:
    with pytest.raises(ValueError, match="time to live"):
        registry.create(ttl=0)
    with pytest.raises(ValueError, match="at least one use"):
        registry.create(ttl=HOUR, uses=0)


def test_the_stored_form_keeps_hashes_and_no_secrets(
    registry: JoinTokenRegistry, clock: FakeClock
) -> None:
    first = registry.create(ttl=HOUR, uses=2, hostname="node7", description="rack 1")
    clock.advance(1)
    second = registry.create(ttl=HOUR, attributes={"zone": "a"})
    registry.consume(first.token, hostname="node7")
    stored = json.dumps(registry.to_json())
    for issued in (first, second):
        assert issued.token.split(".")[2] not in stored
    restored = JoinTokenRegistry.from_json(json.loads(stored), clock)
    assert restored.list_tokens() == registry.list_tokens()
    assert restored.consume(second.token, attributes={"zone": "a"}).attributes == {"zone": "a"}
    assert restored.consume(first.token, hostname="node7").uses_left == 1
    with pytest.raises(ValueError, match="version"):
        JoinTokenRegistry.from_json({"version": 2, "tokens": []}, clock)


def test_listings_show_no_secret(registry: JoinTokenRegistry) -> None:
    issued = registry.create(ttl=HOUR)
    (info,) = registry.list_tokens()
    assert issued.token.split(".")[2] not in repr(info)
    assert not hasattr(info, "secret_hash")
