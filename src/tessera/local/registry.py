"""`tessera up --registry`: a container registry on loopback for the local cluster's images.

It is Debian's `docker-registry` (the CNCF distribution registry) serving plain HTTP on
127.0.0.1, with its storage in the cluster's work dir; the local agents list it in their
`--insecure-registries`. Push to it with any client (`skopeo copy … docker://127.0.0.1:5000/…`)
or with `tessera.agent.images.build`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

DEFAULT_REGISTRY_PORT = 5000


class RegistryUnavailable(Exception):
    """The registry cannot start here; the message says why."""


def registry_config(storage: Path, address: str) -> dict[str, Any]:
    """The registry's config (JSON is YAML): filesystem storage, deletes allowed, listening
    on `address` (`127.0.0.1:<port>`). The test fixtures start from it too."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": address},
        "health": {"storagedriver": {"enabled": False}},
    }


def start_registry(work_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the registry in its own session and wait until it answers `GET /v2/`."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RegistryUnavailable(
            "docker-registry is not installed (Debian package docker-registry; `make run` "
            "installs it when run as root)"
        )
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RegistryUnavailable(
                f"127.0.0.1:{port} is already in use: choose another with --registry-port"
            )
    directory = work_dir / "registry"
    (directory / "storage").mkdir(parents=True, exist_ok=True)
    config = directory / "config.yml"
    config.write_text(json.dumps(registry_config(directory / "storage", f"127.0.0.1:{port}")))
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v2/"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RegistryUnavailable(f"the registry exited at start; see {log_path}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RegistryUnavailable(f"the registry did not answer on {url}; see {log_path}")
