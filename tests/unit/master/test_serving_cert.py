"""The master's HTTPS certificate: issued from the cluster CA before the API serves, kept
while it still fits, issued again when the names change; one CA however many masters start."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from tessera.clock import SystemClock
from tessera.master.config import MasterConfig
from tessera.master.keys import load_or_create
from tessera.master.serving_cert import api_names, ensure_serving_cert
from tessera.security.ca import load_cert, serving_names
from tessera.store import MemoryStore


def test_issued_once_kept_then_issued_again_when_the_names_change(tmp_path: Path) -> None:
    store = MemoryStore()
    config = MasterConfig(work_dir=tmp_path, advertise_url="https://m1.example:5050")
    first = asyncio.run(ensure_serving_cert(config, store, SystemClock()))
    assert first.key.stat().st_mode & 0o777 == 0o600
    assert first.ca.stat().st_mode & 0o777 == 0o644
    cert = load_cert(first.cert.read_bytes())
    cert.verify_directly_issued_by(load_cert(first.ca.read_bytes()))
    assert {"m1.example", "localhost", "127.0.0.1"} <= serving_names(cert)
    assert serving_names(cert) == {name.lower() for name in api_names(config)}

    again = asyncio.run(ensure_serving_cert(config, store, SystemClock()))
    assert load_cert(again.cert.read_bytes()).serial_number == cert.serial_number

    moved = replace(config, advertise_url="https://m2.example:5050")
    renamed = load_cert(
        asyncio.run(ensure_serving_cert(moved, store, SystemClock())).cert.read_bytes()
    )
    assert renamed.serial_number != cert.serial_number
    assert "m2.example" in serving_names(renamed) and "m1.example" not in serving_names(renamed)


def test_a_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    config = MasterConfig(work_dir=tmp_path)
    old = asyncio.run(ensure_serving_cert(config, MemoryStore(), SystemClock()))
    old_cert = load_cert(old.cert.read_bytes())
    (tmp_path / "cluster-key").unlink()  # a new cluster in the same work dir
    new = asyncio.run(ensure_serving_cert(config, MemoryStore(), SystemClock()))
    new_cert = load_cert(new.cert.read_bytes())
    new_cert.verify_directly_issued_by(load_cert(new.ca.read_bytes()))
    assert new_cert.serial_number != old_cert.serial_number


def test_masters_starting_together_agree_on_one_ca() -> None:
    store = MemoryStore()
    key = bytes(range(32))

    async def together() -> list[x509.Certificate]:
        bundles = await asyncio.gather(*(load_or_create(store, key) for _ in range(4)))
        return [bundle.ca.cert for bundle in bundles if bundle.ca is not None]

    cas = asyncio.run(together())
    assert len(cas) == 4 and len({ca.serial_number for ca in cas}) == 1
