"""The cluster's own secrets: its id, token-signing key, key-encryption key and CA, in the store.

Every master needs the same keys (a token issued by one is checked by all; a secret written
through one is read through another), so they live in the store, not in a work dir, sealed
with AES-256-GCM under the *cluster key*: 32 random bytes that each master is given
(`--cluster-key FILE`). A lone master creates its cluster key in its work dir (0600) on
first start; for several masters the operator copies that one file to the others (see
docs/security.md, "Several masters"). The store alone, or a backup of it, opens nothing.

The leader creates the bundle on the cluster's first start; a master whose key does not open
the bundle refuses to start, saying so, instead of minting keys of its own. A bundle sealed
before the cluster had a CA gets one added by the next leader (the same commit seals both).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.clock import Clock, SystemClock
from tessera.security.ca import ClusterCA, new_ca
from tessera.security.tokens import new_signing_key, private_key_from_pem, private_key_to_pem
from tessera.store import Put, StaleRevision, StateStore

KIND = "cluster"
KEY = "keys"
CLUSTER_KEY_BYTES = 32
# A busy store moves on between the read and the write; creating tries again this often.
COMMIT_ATTEMPTS = 50
# Bound to the record so a sealed blob cannot be replayed as another kind of record.
_ASSOCIATED = b"tessera cluster keys v1"


class ClusterKeyError(Exception):
    """The cluster key is missing, malformed, or does not open the cluster's keys."""


@dataclass(frozen=True)
class ClusterKeys:
    cluster_id: str
    signing_key: rsa.RSAPrivateKey
    kek: bytes
    # The cluster CA (security/ca.py); None only in a bundle sealed before there was one.
    ca: ClusterCA | None = None

    @staticmethod
    def new(clock: Clock | None = None) -> ClusterKeys:
        cluster_id = str(uuid.uuid4())
        ca = new_ca(cluster_id, clock or SystemClock())
        return ClusterKeys(cluster_id, new_signing_key(), secrets.token_bytes(32), ca)

    def seal(self, cluster_key: bytes) -> dict[str, str]:
        plain = json.dumps(
            {
                "cluster_id": self.cluster_id,
                "signing_key": private_key_to_pem(self.signing_key).decode(),
                "kek": base64.b64encode(self.kek).decode(),
                **(
                    {"ca_cert": self.ca.cert_pem().decode(), "ca_key": self.ca.key_pem().decode()}
                    if self.ca is not None
                    else {}
                ),
            }
        ).encode()
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(cluster_key).encrypt(nonce, plain, _ASSOCIATED)
        return {
            "version": "1",
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }

    @staticmethod
    def open(record: dict[str, str], cluster_key: bytes) -> ClusterKeys:
        try:
            nonce = base64.b64decode(record["nonce"])
            sealed = base64.b64decode(record["sealed"])
            plain = AESGCM(cluster_key).decrypt(nonce, sealed, _ASSOCIATED)
        except (InvalidTag, KeyError, ValueError):
            raise ClusterKeyError(
                "this master's cluster key does not open the cluster's keys in the store: "
                "give every master the same --cluster-key file"
            ) from None
        data = json.loads(plain)
        ca = None
        if "ca_cert" in data:
            ca = ClusterCA.from_pem(data["ca_cert"].encode(), data["ca_key"].encode())
        return ClusterKeys(
            data["cluster_id"],
            private_key_from_pem(data["signing_key"].encode()),
            base64.b64decode(data["kek"]),
            ca,
        )


def read_cluster_key(path: Path, create: bool) -> bytes:
    """The 32-byte cluster key from `path` (hex or base64), created (0600) when allowed."""
    if not path.exists():
        if not create:
            raise ClusterKeyError(f"cluster key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(CLUSTER_KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return key
    text = path.read_text().strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text)
        except ValueError:
            continue
        if len(key) == CLUSTER_KEY_BYTES:
            return key
    raise ClusterKeyError(f"{path}: a cluster key is 32 bytes, written as hex or base64")


async def load_or_create(
    store: StateStore, cluster_key: bytes, clock: Clock | None = None
) -> ClusterKeys:
    """The cluster's keys; the first master of a new cluster creates them, and one that finds a
    bundle without a CA (sealed by an older version) adds one. Creating is a compare-and-set on
    the store's revision, so masters starting together (each needs the CA for its HTTPS
    certificate before it serves) agree on one bundle: the losers read the winner's."""
    for _ in range(COMMIT_ATTEMPTS):
        revision = await store.revision()
        record = await store.get(KIND, KEY)
        if record is not None:
            keys = ClusterKeys.open(record, cluster_key)
            if keys.ca is not None:
                return keys
            keys = replace(keys, ca=new_ca(keys.cluster_id, clock or SystemClock()))
        else:
            keys = ClusterKeys.new(clock)
        try:
            await store.commit([Put(KIND, KEY, keys.seal(cluster_key))], expect_revision=revision)
        except StaleRevision:
            continue  # someone wrote meanwhile (perhaps these very keys): read again
        return keys
    raise ClusterKeyError("the store was too busy to create the cluster's keys; start again")


async def load_existing(store: StateStore, cluster_key: bytes) -> ClusterKeys | None:
    """For a follower: the keys if a leader has created them, else None."""
    record = await store.get(KIND, KEY)
    return None if record is None else ClusterKeys.open(record, cluster_key)
