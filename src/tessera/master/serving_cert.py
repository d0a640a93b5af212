"""The master's HTTPS certificate: signed by the cluster CA, kept in the work dir, ready before
uvicorn starts.

uvicorn loads its certificate when it starts listening, but the CA that signs it is sealed in
the store with the cluster's other keys (master/keys.py). So `tessera master` first opens the
store and loads the keys, creating them on a new cluster (a compare-and-set: masters of an etcd
cluster that start together agree on one CA), and only then serves. The files, in
`<work dir>/tls/` (0700):

- `api.key` (0600) and `api.crt`: the serving certificate (serverAuth, 1 year) for the names in
  `--advertise-url`, `--bind`, the host's name and its addresses, and `localhost`; issued again
  at start when those names change, the CA changed, or it is past 2/3 of its life;
- `ca.crt` (0644): the cluster CA's certificate, what clients trust (`TESSERA_CA`).

A master restarted while its store cannot be reached serves with the files of its last start
(and answers 503 until the store is back); one that has none waits for the store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from tessera.clock import Clock
from tessera.master.config import MasterConfig
from tessera.master.keys import load_or_create, read_cluster_key
from tessera.security.ca import (
    CertificateRefused,
    ClusterCA,
    load_key_pair,
    master_names,
    master_serving_cert,
    needs_renewal,
    save_key_pair,
    serving_names,
    verify_chain,
)
from tessera.store import StateStore, StoreUnavailable

log = logging.getLogger(__name__)

TLS_DIR = "tls"
SERVING_NAME = "api"  # api.crt, api.key
CA_FILE = "ca.crt"
STORE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class ServingFiles:
    cert: Path
    key: Path
    ca: Path


def tls_dir(config: MasterConfig) -> Path:
    return config.work_dir / TLS_DIR


def ca_file(config: MasterConfig) -> Path:
    """The cluster CA's certificate as this master wrote it (clients trust it)."""
    return tls_dir(config) / CA_FILE


def cluster_key(config: MasterConfig) -> bytes:
    path = config.cluster_key_file or config.work_dir / "cluster-key"
    # Only a lone master may create its key; several masters must be given the same one.
    return read_cluster_key(path, create=config.cluster_key_file is None)


def api_names(config: MasterConfig) -> list[str]:
    """What the serving certificate covers: clients dial the master by any of these."""
    names = master_names(config.url, socket.gethostname(), bind_addresses(config.bind))
    return [*names, "localhost"] if "localhost" not in names else names


async def ensure_serving_cert(
    config: MasterConfig, store: StateStore, clock: Clock
) -> ServingFiles:
    """The serving certificate's files, (re-)issued when needed. Raises ClusterKeyError when
    this master's cluster key does not open the cluster's keys."""
    directory = tls_dir(config)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = ServingFiles(
        directory / f"{SERVING_NAME}.crt", directory / f"{SERVING_NAME}.key", directory / CA_FILE
    )
    key = cluster_key(config)
    while True:
        try:
            keys = await load_or_create(store, key, clock)
            break
        except StoreUnavailable as error:
            # A master restarted while its store is down still serves (a follower answers
            # 503 until the store is back) with the certificate of its last start.
            if all(path.exists() for path in (files.cert, files.key, files.ca)):
                log.warning("store unreachable (%s): serving with the last certificate", error)
                return files
            log.warning("store unreachable (%s): waiting for it to issue a certificate", error)
            await asyncio.sleep(STORE_RETRY_SECONDS)
    assert keys.ca is not None  # load_or_create always returns a bundle with a CA
    names = api_names(config)
    if not _still_good(directory, keys.ca, names, clock):
        save_key_pair(master_serving_cert(keys.ca, names, clock), directory, SERVING_NAME)
        log.info("issued the API's serving certificate for %s", ", ".join(names))
    _write_public(directory / CA_FILE, keys.ca.cert_pem())
    log.info("cluster CA pin %s", keys.ca.pin)
    return files


def _still_good(directory: Path, ca: ClusterCA, names: list[str], clock: Clock) -> bool:
    try:
        pair = load_key_pair(directory, SERVING_NAME)
    except (OSError, ValueError):
        return False
    try:
        verify_chain(pair.cert, ca.cert, clock, "server")
    except CertificateRefused:
        return False
    wanted = {name.lower() for name in names}
    return serving_names(pair.cert) == wanted and not needs_renewal(pair.cert, clock.wall())


def _write_public(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def bind_addresses(bind: str) -> list[str]:
    """The addresses clients may dial this master at: the bound one, or every local one."""
    try:
        bound = ipaddress.ip_address(bind)
    except ValueError:
        return ["127.0.0.1"]
    if not bound.is_unspecified:
        return [str(bound), "127.0.0.1"]
    found = ["127.0.0.1"]
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6) and "%" not in entry.address:
                found.append(entry.address)
    return found
