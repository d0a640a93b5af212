"""Passwords: argon2id hashes, rehash on old parameters, unknown users cost a real verify."""

from __future__ import annotations

import dataclasses

import pytest
from argon2 import PasswordHasher, extract_parameters

from tessera.security.passwords import (
    MAX_PASSWORD_BYTES,
    PRODUCTION_PARAMETERS,
    TEST_PARAMETERS,
    PasswordCheck,
    Passwords,
)


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(TEST_PARAMETERS)


def test_hash_and_verify(passwords: Passwords) -> None:
    stored = passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert "correct" not in stored
    assert passwords.verify_password(stored, "correct horse battery staple") == PasswordCheck(
        ok=True
    )
    assert passwords.verify_password(stored, "Correct horse battery staple").ok is False
    assert passwords.hash_password("same") != passwords.hash_password("same")  # salted


def test_production_profile_is_rfc9106_low_memory() -> None:
    assert PRODUCTION_PARAMETERS.time_cost == 3
    assert PRODUCTION_PARAMETERS.memory_cost == 64 * 1024
    assert PRODUCTION_PARAMETERS.parallelism == 4
    assert PRODUCTION_PARAMETERS.type.name == "ID"


def test_old_parameters_ask_for_a_rehash(passwords: Passwords) -> None:
    weaker = dataclasses.replace(TEST_PARAMETERS, time_cost=TEST_PARAMETERS.time_cost + 1)
    old = PasswordHasher.from_parameters(weaker).hash("hunter2")
    check = passwords.verify_password(old, "hunter2")
    assert check == PasswordCheck(ok=True, needs_rehash=True)
    assert passwords.verify_password(old, "hunter3") == PasswordCheck(ok=False)
    renewed = passwords.hash_password("hunter2")
    assert passwords.verify_password(renewed, "hunter2").needs_rehash is False


def test_unknown_user_runs_a_verify_against_the_dummy_hash(
    passwords: Passwords, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []
    real_verify = passwords._verify

    def counting(stored: str, password: bytes) -> bool:
        verified.append(stored)
        return real_verify(stored, password)

    monkeypatch.setattr(passwords, "_verify", counting)
    stored = passwords.hash_password("pw")
    assert passwords.verify_password(None, "pw") == PasswordCheck(ok=False)
    assert passwords.verify_password(stored, "wrong") == PasswordCheck(ok=False)
    # one argon2 verify each, against hashes of the same parameters: same cost, same answer
    assert len(verified) == 2
    assert extract_parameters(verified[0]) == extract_parameters(verified[1]) == TEST_PARAMETERS


def test_damaged_hash_and_odd_input_are_just_wrong(passwords: Passwords) -> None:
    stored = passwords.hash_password("pw")
    assert passwords.verify_password("$argon2id$garbage", "pw").ok is False
    assert passwords.verify_password("", "pw").ok is False
    assert passwords.verify_password("plaintext", "plaintext").ok is False
    assert passwords.verify_password(stored, "").ok is False
    assert passwords.verify_password(stored, "\ud800").ok is False
    assert passwords.verify_password(stored, "x" * (MAX_PASSWORD_BYTES + 1)).ok is False


def test_refuses_to_hash_empty_or_huge(passwords: Passwords) -> None:
    for bad in ("", "x" * (MAX_PASSWORD_BYTES + 1), "\udfff"):
        with pytest.raises(ValueError):
            passwords.hash_password(bad)


def test_unicode_forms_match(passwords: Passwords) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    stored = passwords.hash_password(composed)
    assert passwords.verify_password(stored, decomposed).ok is True
