"""Envelope encryption of secret values: a fresh data key per value, wrapped by the cluster KEK.

`seal(value, path, kek)` draws a random 256-bit data key (DEK) and encrypts the value with
AES-256-GCM under it (random 96-bit nonce); the DEK itself is encrypted (wrapped) with the
cluster's key-encryption key (KEK), AES-256-GCM again. Both encryptions take the secret's
canonical path as associated data, so a sealed value copied to another path does not open,
and neither does a wrapped key copied between secrets. A DEK encrypts exactly one value, so
the GCM limit on messages per key never comes near; the KEK wraps one 32-byte key per write.

`Sealed.kek_id` names the KEK that wrapped the DEK (a digest of it, never the key), so the KEK
can rotate later: `rewrap` re-encrypts the DEK under a new KEK and leaves the ciphertext as it
is. Pure functions: no I/O, no clock; the caller stores `Sealed.to_json()`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
MAX_VALUE_BYTES = 1 << 20  # 1 MiB, DC/OS's limit per secret
KEY_BYTES = 32
NONCE_BYTES = 12
_VALUE_AAD = b"tessera secret value v1\x00"
_KEY_AAD = b"tessera secret key v1\x00"


class SecretBoxError(Exception):
    """A sealed value that does not open: tampered, moved to another path, or another KEK."""


class ValueTooLarge(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"a secret value is at most {MAX_VALUE_BYTES} bytes, got {size}")
        self.size = size


@dataclass(frozen=True, slots=True)
class Sealed:
    """What the store keeps of a secret value: nothing here opens without the KEK."""

    kek_id: str
    wrapped_key: bytes  # nonce + AES-GCM(KEK, DEK)
    nonce: bytes
    ciphertext: bytes  # AES-GCM(DEK, value), tag included
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "kek_id": self.kek_id,
            "wrapped_key": _b64(self.wrapped_key),
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Sealed:
        try:
            version = int(data["v"])
            if version != FORMAT_VERSION:
                raise SecretBoxError(f"unknown sealed format version {version}")
            return Sealed(
                kek_id=str(data["kek_id"]),
                wrapped_key=_unb64(data["wrapped_key"]),
                nonce=_unb64(data["nonce"]),
                ciphertext=_unb64(data["ciphertext"]),
                version=version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise SecretBoxError(f"not a sealed secret: {error}") from None


def kek_id(kek: bytes) -> str:
    """A public name for a KEK: a domain-separated digest, so it reveals nothing of the key."""
    _check_key(kek)
    return hashlib.sha256(b"tessera kek id\x00" + kek).hexdigest()[:16]


def seal(value: bytes, path: str, kek: bytes) -> Sealed:
    """Encrypt `value` for the secret at canonical `path` (`/team-a/db`)."""
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLarge(len(value))
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, value, _VALUE_AAD + path.encode())
    return Sealed(kek_id(kek), _wrap(data_key, path, kek), nonce, ciphertext)


def open_sealed(sealed: Sealed, path: str, kek: bytes) -> bytes:
    """The value, or SecretBoxError if anything (path, KEK, a single bit) does not match."""
    if sealed.kek_id != kek_id(kek):
        raise SecretBoxError("sealed under another key-encryption key")
    data_key = _unwrap(sealed.wrapped_key, path, kek)
    try:
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _VALUE_AAD + path.encode())
    except (InvalidTag, ValueError):
        raise SecretBoxError("the sealed value does not open at this path") from None


def rewrap(sealed: Sealed, path: str, old_kek: bytes, new_kek: bytes) -> Sealed:
    """The same ciphertext with its data key wrapped by `new_kek` (KEK rotation)."""
    if sealed.kek_id != kek_id(old_kek):
        raise SecretBoxError("sealed under another key-encryption key")
    data_key = _unwrap(sealed.wrapped_key, path, old_kek)
    return Sealed(kek_id(new_kek), _wrap(data_key, path, new_kek), sealed.nonce, sealed.ciphertext)


def _wrap(data_key: bytes, path: str, kek: bytes) -> bytes:
    _check_key(kek)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, _KEY_AAD + path.encode())


def _unwrap(wrapped: bytes, path: str, kek: bytes) -> bytes:
    _check_key(kek)
    nonce, body = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
    try:
        data_key = AESGCM(kek).decrypt(nonce, body, _KEY_AAD + path.encode())
    except (InvalidTag, ValueError):
        raise SecretBoxError("the data key does not unwrap at this path") from None
    if len(data_key) != KEY_BYTES:
        raise SecretBoxError("the data key has the wrong length")
    return data_key


def _check_key(kek: bytes) -> None:
    if len(kek) != KEY_BYTES:
        raise ValueError(f"a key-encryption key is {KEY_BYTES} bytes, got {len(kek)}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)
