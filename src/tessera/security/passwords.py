"""Password hashing for local users: argon2id, and the same cost whether or not the user exists.

Production uses RFC 9106's low-memory profile (argon2id, t=3, m=64 MiB, p=4): one verify took
about 200 ms (median of 20: 193-234 ms, range 139-272 ms, other work running) on the 2-core
development machine, so a login is deliberately slow and the API must cap concurrent hashes
(a semaphore and a worker thread: not this module's job). Tests inject
`TEST_PARAMETERS`. Passwords are NFKC-normalised (NIST SP 800-63B) so the same characters
typed on different keyboards match. Verifying a login for an unknown user runs the same
argon2 verify against a dummy hash, so timing cannot tell "no such user" from "wrong
password". A stored hash made with older parameters is reported as needing a rehash.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from argon2 import Parameters, PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PRODUCTION_PARAMETERS = profiles.RFC_9106_LOW_MEMORY
# "Only for testing!" (argon2-cffi): microseconds per hash, still argon2id.
TEST_PARAMETERS: Parameters = profiles.CHEAPEST
# Long enough for any passphrase; refuses megabyte bodies before hashing them.
MAX_PASSWORD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    ok: bool
    # The stored hash used weaker parameters than today's: store `hash_password(password)`.
    needs_rehash: bool = False


class Passwords:
    def __init__(self, parameters: Parameters = PRODUCTION_PARAMETERS) -> None:
        self._hasher = PasswordHasher.from_parameters(parameters)
        # Built once with the same parameters as real hashes, so verifying against it costs
        # what verifying against a real user's hash costs.
        self._dummy_hash = self._hasher.hash("tessera: no such user")

    def hash_password(self, password: str) -> str:
        encoded = _normalised(password)
        if not encoded:
            raise ValueError("a password cannot be empty")
        if len(encoded) > MAX_PASSWORD_BYTES:
            raise ValueError(f"a password is at most {MAX_PASSWORD_BYTES} bytes")
        return self._hasher.hash(encoded)

    def verify_password(self, stored_hash: str | None, password: str) -> PasswordCheck:
        """Whether `password` matches; `stored_hash=None` (unknown user) costs the same."""
        encoded = _normalised(password)
        if stored_hash is None or not encoded or len(encoded) > MAX_PASSWORD_BYTES:
            self._verify(self._dummy_hash, b"")
            return PasswordCheck(ok=False)
        if not self._verify(stored_hash, encoded):
            return PasswordCheck(ok=False)
        return PasswordCheck(ok=True, needs_rehash=self._hasher.check_needs_rehash(stored_hash))

    def _verify(self, stored_hash: str, encoded: bytes) -> bool:
        try:
            return self._hasher.verify(stored_hash, encoded)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            # A damaged stored hash locks that user out; it must not crash the login.
            return False


def _normalised(password: str) -> bytes:
    try:
        return unicodedata.normalize("NFKC", password).encode("utf-8")
    except UnicodeError:  # lone surrogates from JSON: no such password can match
        return b""
