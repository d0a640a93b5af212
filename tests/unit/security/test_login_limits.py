"""Failed-login limits with a fake clock: 429 after the limit, Retry-After to the second."""

from __future__ import annotations

import pytest

from tessera.security.ratelimit import LoginDecision, LoginLimiter, LoginLimits, address_key
from tessera.testing.clock import FakeClock

IP = "203.0.113.7"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> LoginLimiter:
    return LoginLimiter(clock)


def _fail(limiter: LoginLimiter, uid: str, address: str = IP) -> None:
    assert limiter.check(uid, address).allowed
    limiter.record_failure(uid, address)


def test_sixth_attempt_in_a_minute_is_refused_until_the_window_moves(
    limiter: LoginLimiter, clock: FakeClock
) -> None:
    for _ in range(5):
        _fail(limiter, "alice")
        clock.advance(2)  # failures at 0, 2, 4, 6, 8
    # now = 10: the first failure leaves the window at 60
    assert limiter.check("alice", IP) == LoginDecision(allowed=False, retry_after_seconds=50)
    clock.advance(49.5)
    assert limiter.check("alice", IP) == LoginDecision(allowed=False, retry_after_seconds=1)
    clock.advance(0.5)
    assert limiter.check("alice", IP).allowed
    limiter.record_failure("alice", IP)  # 2, 4, 6, 8, 60 -> blocked until 62
    assert limiter.check("alice", IP) == LoginDecision(allowed=False, retry_after_seconds=2)


def test_retry_after_rounds_up(limiter: LoginLimiter, clock: FakeClock) -> None:
    for _ in range(5):
        _fail(limiter, "alice")
    clock.advance(0.25)
    assert limiter.check("alice", IP).retry_after_seconds == 60  # 59.75 -> 60


def test_refused_attempts_do_not_extend_the_block(limiter: LoginLimiter, clock: FakeClock) -> None:
    for _ in range(5):
        _fail(limiter, "alice")
    for _ in range(100):
        clock.advance(0.5)
        assert not limiter.check("alice", IP).allowed
    clock.advance(10)
    assert limiter.check("alice", IP).allowed


def test_success_resets_the_uid_but_not_the_address(
    clock: FakeClock,
) -> None:
    limiter = LoginLimiter(clock, LoginLimits(per_uid=3, per_address=5))
    for _ in range(2):
        _fail(limiter, "alice")
    limiter.record_success("alice")
    for _ in range(2):
        _fail(limiter, "alice")
    assert limiter.check("alice", IP).allowed  # 2 since the success, not 4
    _fail(limiter, "bob")  # the address has 5 failures now
    decision = limiter.check("carol", IP)
    assert decision == LoginDecision(allowed=False, retry_after_seconds=60)
    assert limiter.check("carol", "198.51.100.1").allowed


def test_address_limit_across_uids(limiter: LoginLimiter, clock: FakeClock) -> None:
    for i in range(20):
        _fail(limiter, f"user{i}")
    assert not limiter.check("someone-else", IP).allowed
    assert limiter.check("user0", "198.51.100.1").allowed


def test_ipv6_counts_per_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == IP
    assert address_key(IP) == IP
    assert address_key("testclient") == "testclient"


def test_memory_is_bounded(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock, LoginLimits(max_keys=100))
    for i in range(1000):
        limiter.record_failure(f"u{i}", f"10.0.{i // 250}.{i % 250}")
    assert limiter.tracked() == (100, 100)
    clock.advance(61)
    limiter.record_failure("late", "10.9.9.9")
    assert limiter.tracked() == (1, 1)  # idle keys forgotten
