import os

import pytest

from tessera.security.secret_box import (
    MAX_VALUE_BYTES,
    Sealed,
    SecretBoxError,
    ValueTooLarge,
    kek_id,
    open_sealed,
    rewrap,
    seal,
)

KEK = bytes(range(32))
OTHER = bytes(32)


def test_round_trip_through_json() -> None:
    sealed = seal(b"hunter2", "/team-a/db", KEK)
    again = Sealed.from_json(sealed.to_json())
    assert open_sealed(again, "/team-a/db", KEK) == b"hunter2"
    assert b"hunter2" not in repr(sealed.to_json()).encode()


def test_each_seal_uses_a_fresh_key_and_nonce() -> None:
    one, two = seal(b"same", "/a", KEK), seal(b"same", "/a", KEK)
    assert one.ciphertext != two.ciphertext
    assert one.nonce != two.nonce
    assert one.wrapped_key != two.wrapped_key


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_key", "nonce"])
def test_any_flipped_bit_is_refused(field: str) -> None:
    sealed = seal(b"value", "/a/b", KEK)
    data = bytearray(getattr(sealed, field))
    data[len(data) // 2] ^= 0x01
    changed = {field: bytes(data)}
    tampered = Sealed(
        sealed.kek_id,
        changed.get("wrapped_key", sealed.wrapped_key),
        changed.get("nonce", sealed.nonce),
        changed.get("ciphertext", sealed.ciphertext),
    )
    with pytest.raises(SecretBoxError):
        open_sealed(tampered, "/a/b", KEK)


def test_a_value_moved_to_another_path_does_not_open() -> None:
    sealed = seal(b"team-b's", "/team-b/db", KEK)
    with pytest.raises(SecretBoxError):
        open_sealed(sealed, "/team-a/db", KEK)


def test_wrong_kek_is_refused_even_with_a_forged_id() -> None:
    sealed = seal(b"value", "/a", KEK)
    with pytest.raises(SecretBoxError):
        open_sealed(sealed, "/a", OTHER)
    forged = Sealed(kek_id(OTHER), sealed.wrapped_key, sealed.nonce, sealed.ciphertext)
    with pytest.raises(SecretBoxError):
        open_sealed(forged, "/a", OTHER)


def test_rewrap_keeps_the_ciphertext_and_opens_with_the_new_kek_only() -> None:
    sealed = seal(b"rotate me", "/a", KEK)
    rotated = rewrap(sealed, "/a", KEK, OTHER)
    assert rotated.ciphertext == sealed.ciphertext
    assert open_sealed(rotated, "/a", OTHER) == b"rotate me"
    with pytest.raises(SecretBoxError):
        open_sealed(rotated, "/a", KEK)


def test_sizes() -> None:
    assert open_sealed(seal(b"", "/a", KEK), "/a", KEK) == b""
    big = os.urandom(MAX_VALUE_BYTES)
    assert open_sealed(seal(big, "/a", KEK), "/a", KEK) == big
    with pytest.raises(ValueTooLarge):
        seal(big + b"x", "/a", KEK)


def test_bad_keys_and_records() -> None:
    with pytest.raises(ValueError):
        seal(b"v", "/a", b"short")
    with pytest.raises(SecretBoxError):
        Sealed.from_json(
            {"v": 1, "kek_id": "x", "wrapped_key": "!!", "nonce": "", "ciphertext": ""}
        )
    with pytest.raises(SecretBoxError):
        Sealed.from_json({"v": 2})
    assert kek_id(KEK) != kek_id(OTHER) and KEK.hex() not in kek_id(KEK)
