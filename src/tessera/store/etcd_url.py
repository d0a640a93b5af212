"""`etcd://h1:2379,h2:2379[/prefix][?max_txn_ops=N&max_request_bytes=N&timeout=S]`."""

from __future__ import annotations

from urllib.parse import parse_qs

from tessera.store.etcd import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, EtcdStore


def open_etcd_store(url: str) -> EtcdStore:
    rest, _, query = url.removeprefix("etcd://").partition("?")
    hosts, slash, path = rest.partition("/")
    options = {name: values[-1] for name, values in parse_qs(query).items()}
    unknown = set(options) - {"max_txn_ops", "max_request_bytes", "timeout"}
    if unknown:
        raise ValueError(f"unknown etcd store options {sorted(unknown)} in {url!r}")
    return EtcdStore(
        hosts.split(","),
        prefix=f"/{path}" if slash and path else "/tessera",
        timeout=float(options.get("timeout", 5.0)),
        max_txn_ops=int(options.get("max_txn_ops", DEFAULT_MAX_TXN_OPS)),
        max_request_bytes=int(options.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)),
    )
