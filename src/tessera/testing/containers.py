"""Helpers for container tests and benchmarks: busybox images in a real registry, and a check
that nothing of a container (mount, network namespace, iptables chain, cgroup) is left."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tessera.agent.cgroups import parse_mountinfo
from tessera.agent.containers.network import netns_name
from tessera.agent.images.build import (
    Blob,
    Compression,
    ContainerConfig,
    Entry,
    build_image,
    build_layer,
    busybox_entries,
    file,
)
from tessera.agent.images.push import push_image

WEB_ROOT = "www"
HELLO = "hello from a tessera container\n"


def container_support() -> str | None:
    """Why container tests cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "container tests need root (runc, overlay mounts, network namespaces)"
    for binary in ("runc", "docker-registry", "iptables"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (`make` installs it as root)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins are not installed (containernetworking-plugins)"
    try:
        from tessera.agent.images.build import find_busybox

        find_busybox()
    except (OSError, ValueError, RuntimeError) as error:
        return f"no static busybox for test images: {error}"
    return None


def busybox_layers(extra: Sequence[Entry] = (), compression: Compression = "gzip") -> list[Blob]:
    """busybox plus a web root, and the `extra` entries in a second layer."""
    base = [*busybox_entries(), file(f"{WEB_ROOT}/index.html", HELLO.encode())]
    layers = [build_layer(base, compression=compression)]
    if extra:
        layers.append(build_layer(extra, compression=compression))
    return layers


def push_busybox(
    registry: str,
    repository: str,
    tag: str = "latest",
    *,
    config: ContainerConfig | None = None,
    extra: Sequence[Entry] = (),
    credentials: tuple[str, str] | None = None,
) -> str:
    """Push a busybox image; returns its reference (`<registry>/<repository>:<tag>`)."""
    image = build_image(busybox_layers(extra), config=config or ContainerConfig())
    user, password = credentials or (None, None)
    push_image(registry, repository, image, tag, username=user, password=password)
    return f"{registry}/{repository}:{tag}"


def leftovers(marker: str) -> list[str]:
    """What a container run left on this host whose path or name contains `marker` (a test's
    work dir or cgroup prefix): mounts, cgroups in any hierarchy, runc containers."""
    found: list[str] = []
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [
        f"mount {line.split()[4]}" for line in mountinfo.splitlines() if marker in line.split()[4]
    ]
    for mount in parse_mountinfo(mountinfo):
        for directory, _, _ in os.walk(mount.mount_point):
            if marker in directory:
                found.append(f"cgroup {directory}")
    return found


def agent_leftovers(work_dir: Path, agent_id: str) -> list[str]:
    """Everything of an agent's containers still on the host once it stopped with none
    running: mounts under its work dir, its cgroups in any hierarchy, network namespaces
    and iptables rules of its bridge attachments."""
    found = leftovers(str(work_dir)) + leftovers(f"/{agent_id}")
    return found + network_leftovers([netns_prefix(work_dir / "network")])


def netns_prefix(state_dir: Path) -> str:
    """What the names of every network namespace of one agent's bridge start with."""
    return netns_name(state_dir, "-").rsplit("-", 1)[0]


def network_leftovers(names: Sequence[str]) -> list[str]:
    """Network namespaces and iptables chains of these containers (`names`: their netns names
    or CNI container IDs) still on the host."""
    found: list[str] = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    for name in names:
        found += [f"netns {line}" for line in namespaces.splitlines() if name in line]
        found += [f"iptables {line}" for line in rules.splitlines() if name in line]
    return found
