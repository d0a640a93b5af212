"""Failed-login limits: per user and per source address, so passwords cannot be brute-forced.

A login may proceed unless its uid has had `per_uid` failures, or its address `per_address`
failures, within the last `window_seconds`; then the answer carries `Retry-After`, the
seconds until the oldest of those failures leaves the window. A refused attempt is not a
failure (the password was never checked), so hammering does not extend the block, and the
right password is refused too until the window has moved on. A success clears the uid's
failures but not the address's: one valid account must not reset an attacker's address.
IPv6 addresses count per /64, the block one host usually holds. Each key keeps at most its
limit of timestamps and keys untouched for a window are forgotten; past `max_keys` the least
recently touched key goes, so memory stays bounded under any load. Time comes from the Clock's
monotonic reading. No I/O.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from tessera.clock import Clock


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_uid: int = 5
    per_address: int = 20
    window_seconds: float = 60.0
    max_keys: int = 50_000


@dataclass(frozen=True, slots=True)
class LoginDecision:
    allowed: bool
    retry_after_seconds: int = 0  # whole seconds, for the `Retry-After` header; 0 if allowed


class _FailureLog:
    """The last `limit` failure instants of each key, least recently touched key first."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds before `key` may try again; 0 when it may now."""
        failures = self._failures.get(key)
        if failures is None or len(failures) < self._limit:
            return 0.0
        return max(0.0, failures[0] + self._window - now)

    def record(self, key: str, now: float) -> None:
        self._forget_idle(now)
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self._limit)
        failures.append(now)
        self._failures.move_to_end(key)
        if len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)

    def _forget_idle(self, now: float) -> None:
        # Least recently touched first: stop at the first key that failed within the window.
        while self._failures:
            key, failures = next(iter(self._failures.items()))
            if failures[-1] + self._window > now:
                return
            del self._failures[key]


class LoginLimiter:
    def __init__(self, clock: Clock, limits: LoginLimits = LoginLimits()) -> None:
        self._clock = clock
        window, max_keys = limits.window_seconds, limits.max_keys
        self._by_uid = _FailureLog(limits.per_uid, window, max_keys)
        self._by_address = _FailureLog(limits.per_address, window, max_keys)

    def check(self, uid: str, address: str) -> LoginDecision:
        now = self._clock.monotonic()
        wait = max(self._by_uid.wait(uid, now), self._by_address.wait(address_key(address), now))
        if wait <= 0:
            return LoginDecision(allowed=True)
        return LoginDecision(allowed=False, retry_after_seconds=max(1, math.ceil(wait)))

    def record_failure(self, uid: str, address: str) -> None:
        now = self._clock.monotonic()
        self._by_uid.record(uid, now)
        self._by_address.record(address_key(address), now)

    def record_success(self, uid: str) -> None:
        self._by_uid.clear(uid)

    def tracked(self) -> tuple[int, int]:
        """(uids, addresses) currently remembered."""
        return len(self._by_uid), len(self._by_address)


def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a unix socket, a test client): count it as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
