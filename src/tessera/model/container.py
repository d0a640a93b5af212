"""Container definitions as the master and agents keep them: the image, its network, ports.

`ContainerSpec` is what a task carries to its agent (`TaskSpec.container`); Marathon's and
Metronome's JSON for it is read and written in `model/container_input.py`. Everything here
is pure: frozen value types and their store JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.model.image_reference import InvalidReference, parse_reference

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


# ---- image references --------------------------------------------------------------------------


def image_reference_error(reference: str) -> str | None:
    """Why `reference` is not an image reference as Docker writes it, or None: the
    grammar the agent pulls with (`model.image_reference`), checked at the API so that a
    bad reference is a 422, never a failed launch on an agent."""
    try:
        parse_reference(reference)
    except InvalidReference as error:
        return str(error)
    return None
