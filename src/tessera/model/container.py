"""Container definitions as the master and agents keep them: the image, its network, ports.

`ContainerSpec` is what a task carries to its agent (`TaskSpec.container`); Marathon's and
Metronome's JSON for it is read and written in `model/container_input.py`. Everything here
is pure: frozen value types, their store JSON, and the image reference grammar that the
master checks before an image ever reaches an agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DOCKER = "DOCKER"
MESOS = "MESOS"
HOST = "host"
BRIDGE = "bridge"

# The `docker.parameters` keys an agent knows how to honour without a Docker daemon.
SUPPORTED_PARAMETERS = ("label", "env", "user", "workdir", "shm-size", "hostname")


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One `portMappings` entry of a bridged container."""

    container_port: int = 0  # 0: the same as the host port assigned
    host_port: int = 0  # 0: any free port of the agent's ranges
    service_port: int = 0
    protocol: str = "tcp"  # "tcp", "udp" or "udp,tcp"
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "container_port": self.container_port,
            "host_port": self.host_port,
            "service_port": self.service_port,
            "protocol": self.protocol,
            "name": self.name,
            "labels": dict(self.labels),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PortMapping:
        return PortMapping(
            container_port=int(data.get("container_port", 0)),
            host_port=int(data.get("host_port", 0)),
            service_port=int(data.get("service_port", 0)),
            protocol=str(data.get("protocol", "tcp")),
            name=data.get("name"),
            labels=dict(data.get("labels", {})),
        )


@dataclass(frozen=True, slots=True)
class Volume:
    """A host directory mounted into the container."""

    container_path: str  # absolute
    host_path: str  # absolute, checked on the agent against its allow-list
    mode: str = "RW"  # "RO" or "RW"

    def to_json(self) -> dict[str, Any]:
        return {
            "container_path": self.container_path,
            "host_path": self.host_path,
            "mode": self.mode,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Volume:
        return Volume(
            str(data["container_path"]), str(data["host_path"]), str(data.get("mode", "RW"))
        )


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """A task's container: run `image` with this network, these ports and volumes.

    `image` is empty only for a MESOS container without an image, which runs as a plain
    task (the master never sends such a spec to an agent)."""

    type: str  # "DOCKER" or "MESOS"
    image: str  # as given (validated with the reference grammar)
    force_pull: bool = False
    privileged: bool = False
    parameters: tuple[tuple[str, str], ...] = ()  # allow-listed docker parameters, in order
    network: str = HOST  # "host" or "bridge"
    port_mappings: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()
    credential: tuple[str, str] | None = None  # docker.credential {principal, secret}

    @property
    def bridged(self) -> bool:
        return self.network == BRIDGE

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "image": self.image,
            "force_pull": self.force_pull,
            "privileged": self.privileged,
            "parameters": [list(pair) for pair in self.parameters],
            "network": self.network,
            "port_mappings": [m.to_json() for m in self.port_mappings],
            "volumes": [v.to_json() for v in self.volumes],
            "credential": list(self.credential) if self.credential is not None else None,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ContainerSpec:
        credential = data.get("credential")
        return ContainerSpec(
            type=str(data.get("type", DOCKER)),
            image=str(data.get("image", "")),
            force_pull=bool(data.get("force_pull", False)),
            privileged=bool(data.get("privileged", False)),
            parameters=tuple((str(k), str(v)) for k, v in data.get("parameters", ())),
            network=str(data.get("network", HOST)),
            port_mappings=tuple(PortMapping.from_json(m) for m in data.get("port_mappings", ())),
            volumes=tuple(Volume.from_json(v) for v in data.get("volumes", ())),
            credential=(str(credential[0]), str(credential[1])) if credential else None,
        )


# ---- the image reference grammar ---------------------------------------------------------------
# Docker's distribution/reference grammar, checked here because the master must not import the
# agent's puller: a bad reference is a 422 at the API, never a failed launch on an agent.

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_NAME_MAX = 255


def image_reference_error(reference: str) -> str | None:
    """Why `reference` is not an image reference as Docker writes it, or None.

    `busybox`, `library/busybox:1.36`, `registry:5000/team/app@sha256:<hex>` are fine;
    `UPPER/case`, `app:`, `a//b` and `:tag` are not."""
    if not reference or reference != reference.strip():
        return "must be an image reference such as busybox:1.36 (no blanks)"
    rest, _, digest = reference.partition("@")
    if "@" in reference and not _DIGEST.fullmatch(digest):
        return f"{digest!r} is not a digest such as sha256:<64 hex digits>"
    name, tag = rest, None
    # A colon after the last slash starts the tag; one before it is the registry's port.
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
    if tag is not None and not _TAG.fullmatch(tag):
        return f"{tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)"
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN_RE.fullmatch(first):
            return f"{first!r} is not a valid registry host"
        path = remainder
    else:
        path = name
    if len(name) > _NAME_MAX:
        return f"the repository name is longer than {_NAME_MAX} characters"
    if not _PATH.fullmatch(path):
        return (
            f"{path!r} is not a valid repository name: lowercase letters, digits and "
            "separators ('.', '_', '__', '-') in components joined by '/'"
        )
    return None
