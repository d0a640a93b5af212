"""Wiring of the container runtime into an agent: from its settings, and from a task spec."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tessera.agent.config import AgentConfig
from tessera.agent.containers.network import BridgeNetwork, BridgeSettings, PortMap
from tessera.agent.containers.runtime import ContainerLaunch, ContainerRuntime, RuntimeSettings
from tessera.agent.images.platforms import Platform
from tessera.agent.images.store import Image, ImageSettings, ImageStore
from tessera.model.container import ContainerSpec

MIB = 1024 * 1024


def image_settings(config: AgentConfig) -> ImageSettings:
    limit = config.image_store_limit_mib
    return ImageSettings(
        default_registry=config.default_registry,
        insecure_registries=frozenset(config.insecure_registries),
        docker_config=config.docker_config,
        platform=Platform.current(),
        stall_timeout=config.image_pull_stall_timeout,
        pull_timeout=config.image_pull_timeout,
        gc_delay=config.image_gc_delay,
        limit_bytes=int(limit * MIB) if limit is not None else None,
    )


def build_runtime(config: AgentConfig) -> ContainerRuntime:
    work_dir = Path(config.work_dir).absolute()
    images = ImageStore(work_dir / "images", image_settings(config))
    network = BridgeNetwork(
        work_dir / "network",
        BridgeSettings(bridge=config.bridge, subnet=config.bridge_subnet),
    )
    settings = RuntimeSettings(
        allow_privileged=config.allow_privileged,
        allowed_host_paths=config.allowed_host_paths,
        hostname=config.hostname,
    )
    return ContainerRuntime(work_dir, images, network, settings)


def port_maps(container: ContainerSpec, host_ports: Sequence[int]) -> tuple[PortMap, ...]:
    """The bridge's port forwards: the i-th mapping gets the i-th assigned host port; a
    containerPort of 0 means the same port as on the host; "udp,tcp" forwards both."""
    if container.network != "bridge":
        return ()
    maps: list[PortMap] = []
    for mapping, host_port in zip(container.port_mappings, host_ports, strict=False):
        inside = mapping.container_port or host_port
        for protocol in mapping.protocol.split(","):
            maps.append(PortMap(host_port, inside, protocol.strip()))
    return tuple(maps)


def container_launch(
    container: ContainerSpec, image: Image, host_ports: Sequence[int], user: str | None
) -> ContainerLaunch:
    return ContainerLaunch(
        kind=container.type,
        image=image,
        network=container.network,
        ports=port_maps(container, host_ports),
        parameters=container.parameters,
        volumes=tuple(
            (volume.host_path, volume.container_path, volume.mode == "RO")
            for volume in container.volumes
        ),
        privileged=container.privileged,
        user=user,
    )
