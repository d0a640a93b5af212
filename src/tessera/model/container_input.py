"""Marathon's `container` and `networks` JSON: validated into a `ContainerSpec`, and back.

`read_container(container, networks, where)` checks an app's two fields together (they
decide between host and bridge networking) and returns the spec, the canonical networks
and every error with Marathon's field path (`/container/docker/image`,
`/container/portMappings/0/hostPort`). The deprecated forms are migrated as Marathon 1.5
does: `docker.network` becomes `networks` and `docker.portMappings` becomes
`container.portMappings`; `container_json` always shows the current form.

The shape of each object is a strict pydantic model (unknown fields and wrong types are
422s); what spans several fields (network modes, unique names, the image grammar for
the engine) is checked in plain code below it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tessera.model.container import (
    BRIDGE,
    DOCKER,
    HOST,
    MESOS,
    SUPPORTED_PARAMETERS,
    ContainerSpec,
    PortMapping,
    Volume,
    image_reference_error,
)
from tessera.model.health import FieldError
from tessera.model.secret_refs import file_path_error

_PORT_NAME = r"^[a-z0-9][a-z0-9\-]*$"
_BRIDGE_MODE = "container/bridge"
_NAMED_MODE = "container"

ModelT = TypeVar("ModelT", bound=BaseModel)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ParameterIn(_In):
    key: str
    value: str

    @field_validator("key")
    @classmethod
    def _supported(cls, key: str) -> str:
        if key not in SUPPORTED_PARAMETERS:
            raise ValueError(
                f"parameter {key!r} is not supported; supported: {', '.join(SUPPORTED_PARAMETERS)}"
            )
        return key


class CredentialIn(_In):
    principal: str = Field(min_length=1)
    secret: str = ""


class PortMappingIn(_In):
    containerPort: int = Field(0, ge=0, le=65535)
    hostPort: int | None = Field(None, ge=0, le=65535)
    servicePort: int = Field(0, ge=0, le=65535)
    protocol: Literal["tcp", "udp", "udp,tcp", "tcp,udp"] = "tcp"
    name: str | None = Field(None, pattern=_PORT_NAME, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    # Names which of several container networks a mapping is for: no named networks yet.
    networkNames: list[str] = Field(default_factory=list, max_length=0)

    def to_mapping(self) -> PortMapping:
        return PortMapping(
            container_port=self.containerPort,
            host_port=self.hostPort or 0,
            service_port=self.servicePort,
            protocol="udp,tcp" if self.protocol == "tcp,udp" else self.protocol,
            name=self.name,
            labels=dict(self.labels),
        )


class DockerIn(_In):
    image: str | None = None
    forcePullImage: bool = False
    privileged: bool = False
    parameters: list[ParameterIn] = Field(default_factory=list)
    credential: CredentialIn | None = None
    # Deprecated since Marathon 1.5; migrated to `networks` and `container.portMappings`.
    network: Literal["HOST", "BRIDGE", "USER", "NONE"] | None = None
    portMappings: list[PortMappingIn] | None = None
    pullConfig: dict[str, Any] | None = None

    @field_validator("image")
    @classmethod
    def _reference(cls, image: str | None) -> str | None:
        if image is not None:
            problem = image_reference_error(image)
            if problem:
                raise ValueError(problem)
        return image

    @field_validator("pullConfig")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise ValueError(
                "needs a secret store, not available yet: use docker.credential or the "
                "agent's --docker-config"
            )
        return None


class VolumeIn(_In):
    containerPath: str = Field(min_length=1)
    hostPath: str | None = None
    mode: Literal["RO", "RW"] = "RW"
    persistent: dict[str, Any] | None = None
    external: dict[str, Any] | None = None
    # A secret file volume (`{"containerPath": "db", "secret": "secret0"}`): the file lands in
    # the sandbox at containerPath, relative to it; the name is checked against the app's
    # `secrets` by the caller. Checked in `_check_volumes`, where both fields are known.
    secret: str | None = None

    @field_validator("hostPath")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must be an absolute path")
        return path

    @field_validator("persistent", "external")
    @classmethod
    def _unsupported(cls, value: object) -> None:
        if value is not None:
            raise ValueError("only host volumes (hostPath) and secret volumes are supported")
        return None


class ContainerIn(_In):
    type: Literal["DOCKER", "MESOS"] = "DOCKER"
    docker: DockerIn | None = None
    volumes: list[VolumeIn] = Field(default_factory=list)
    portMappings: list[PortMappingIn] | None = None
    appc: dict[str, Any] | None = None

    @field_validator("appc")
    @classmethod
    def _no_appc(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise ValueError("appc images are not supported: use container.docker.image")
        return None


class NetworkIn(_In):
    mode: Literal["host", "container/bridge", "container"] = "container"
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


# ---- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerReading:
    """What an app's `container` and `networks` say; `networks` is () for host networking."""

    container: ContainerSpec | None
    networks: tuple[Mapping[str, Any], ...]
    errors: tuple[FieldError, ...]
    # Secret file volumes: (index in container.volumes, sandbox path, secret name).
    secret_files: tuple[tuple[int, str, str], ...] = ()

    @property
    def bridged(self) -> bool:
        return any(n.get("mode") == _BRIDGE_MODE for n in self.networks)


def read_container(container: object, networks: object, where: str = "") -> ContainerReading:
    """Validate an app's `container` and `networks` (either may be None)."""
    base = where.strip("/")
    errors: list[FieldError] = []
    parsed = _validate(ContainerIn, container, f"{base}/container", errors)
    nets = _read_networks(networks, f"{base}/networks", errors)
    if container is not None and parsed is None:
        return ContainerReading(None, (), tuple(errors))
    legacy = parsed.docker.network if parsed is not None and parsed.docker else None
    if legacy is not None:
        if networks is not None:
            errors.append(
                FieldError(
                    f"{base}/networks",
                    "must not specify both container.docker.network and networks",
                )
            )
        elif legacy in ("USER", "NONE"):
            errors.append(
                FieldError(
                    f"{base}/container/docker/network",
                    f"{legacy} networking is not supported yet; use BRIDGE or HOST",
                )
            )
        elif legacy == "BRIDGE":
            nets = ({"mode": _BRIDGE_MODE},)
    bridged = any(n.get("mode") == _BRIDGE_MODE for n in nets)
    before = len(errors)
    spec = _spec(parsed, bridged, f"{base}/container", errors) if parsed is not None else None
    invalid = len(errors) > before
    if invalid:
        spec = None  # an invalid container: its errors say why, nothing else should
    if bridged and not invalid and (spec is None or not spec.image):
        errors.append(
            FieldError(f"{base}/networks", "container/bridge networking needs a container image")
        )
    secret_files = tuple(
        (index, volume.containerPath, volume.secret)
        for index, volume in enumerate(parsed.volumes if parsed is not None else ())
        if volume.secret is not None
    )
    return ContainerReading(spec, nets, tuple(errors), secret_files if spec else ())


def _read_networks(raw: object, where: str, errors: list[FieldError]) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        errors.append(FieldError(where, "must be a list"))
        return ()
    found: list[tuple[int, NetworkIn]] = []
    for index, item in enumerate(raw):
        network = _validate(NetworkIn, item, f"{where}/{index}", errors)
        if network is None:
            continue
        if network.mode == _NAMED_MODE:
            errors.append(
                FieldError(
                    f"{where}/{index}/mode",
                    "container networks (named CNI networks) are not supported yet; "
                    "use container/bridge or host",
                )
            )
        elif network.name is not None:
            errors.append(FieldError(f"{where}/{index}/name", "only container networks have names"))
        found.append((index, network))
    modes = {network.mode for _, network in found}
    if len(modes) > 1:
        errors.append(FieldError(where, "must not mix network modes"))
    if sum(1 for _, n in found if n.mode == _BRIDGE_MODE) > 1:
        errors.append(FieldError(where, "may hold at most one container/bridge network"))
    shown: list[dict[str, Any]] = []
    for _, network in found:
        entry: dict[str, Any] = {"mode": network.mode}
        if network.labels:
            entry["labels"] = dict(network.labels)
        shown.append(entry)
    if all(entry == {"mode": "host"} for entry in shown):
        return ()  # host networking is the default; keep one spelling of it
    return tuple(shown)


def _spec(
    parsed: ContainerIn, bridged: bool, where: str, errors: list[FieldError]
) -> ContainerSpec:
    docker = parsed.docker
    image = docker.image if docker is not None else None
    if parsed.type == DOCKER and docker is None:
        errors.append(FieldError(f"{where}/docker", "is required for DOCKER containers"))
    elif parsed.type == DOCKER and image is None:
        errors.append(FieldError(f"{where}/docker/image", "is required"))
    if parsed.type == MESOS and docker is not None:
        if image is None:
            errors.append(FieldError(f"{where}/docker/image", "is required"))
        if docker.parameters:
            errors.append(
                FieldError(f"{where}/docker/parameters", "is only supported for DOCKER containers")
            )
    host_volumes = [volume for volume in parsed.volumes if volume.secret is None]
    if parsed.type == MESOS and not image and host_volumes:
        errors.append(
            FieldError(f"{where}/volumes", "need a container image (container.docker.image)")
        )
    _check_volumes(parsed.volumes, f"{where}/volumes", errors)
    mappings = _port_mappings(parsed, bridged, where, errors)
    credential = docker.credential if docker is not None else None
    return ContainerSpec(
        type=parsed.type,
        image=image or "",
        force_pull=docker.forcePullImage if docker is not None else False,
        privileged=docker.privileged if docker is not None else False,
        parameters=tuple((p.key, p.value) for p in docker.parameters) if docker else (),
        network=BRIDGE if bridged else HOST,
        port_mappings=tuple(m.to_mapping() for m in mappings),
        volumes=tuple(Volume(v.containerPath, v.hostPath or "", v.mode) for v in host_volumes),
        credential=(credential.principal, credential.secret) if credential else None,
    )


def _check_volumes(volumes: Sequence[VolumeIn], where: str, errors: list[FieldError]) -> None:
    for index, volume in enumerate(volumes):
        at = f"{where}/{index}"
        if volume.secret is not None:
            if volume.hostPath is not None:
                errors.append(FieldError(f"{at}/hostPath", "a secret volume has no hostPath"))
            problem = file_path_error(volume.containerPath)
            if problem:
                errors.append(FieldError(f"{at}/containerPath", problem))
            continue
        if volume.hostPath is None:
            errors.append(FieldError(f"{at}/hostPath", "is required"))
        if not volume.containerPath.startswith("/"):
            errors.append(FieldError(f"{at}/containerPath", "must be an absolute path"))


def _port_mappings(
    parsed: ContainerIn, bridged: bool, where: str, errors: list[FieldError]
) -> list[PortMappingIn]:
    legacy = parsed.docker.portMappings if parsed.docker is not None else None
    current = parsed.portMappings
    path = f"{where}/portMappings"
    if legacy and current:
        errors.append(
            FieldError(
                f"{where}/docker/portMappings",
                "must not be given together with container.portMappings",
            )
        )
    elif legacy:
        current, path = legacy, f"{where}/docker/portMappings"
    mappings = list(current or ())
    if mappings and not bridged:
        errors.append(FieldError(path, "portMappings are not allowed with host-networking"))
        return []
    names = [m.name for m in mappings if m.name]
    if len(names) != len(set(names)):
        errors.append(FieldError(path, "Port names must be unique."))
    fixed = [m.hostPort for m in mappings if m.hostPort]
    if len(fixed) != len(set(fixed)):
        errors.append(FieldError(path, "host ports must be unique"))
    service = [m.servicePort for m in mappings if m.servicePort]
    if len(service) != len(set(service)):
        errors.append(FieldError(path, "service ports must be unique"))
    return mappings


# ---- pydantic errors with Marathon's paths ---------------------------------------------------


def _validate(
    model: type[ModelT], raw: object, where: str, errors: list[FieldError]
) -> ModelT | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors.append(FieldError(where, "must be an object"))
        return None
    try:
        return model.model_validate(dict(raw))
    except ValidationError as error:
        for item in error.errors():
            location = [str(part) for part in item.get("loc", ())]
            errors.append(FieldError("/".join([where, *location]), _wording(item)))
        return None


def _wording(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be ≤ {ctx.get('le')}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_long":
        return "must be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("bool_type", "int_type", "string_type", "dict_type", "list_type"):
        return {
            "bool_type": "must be true or false",
            "int_type": "must be a whole number",
            "string_type": "must be a string",
            "dict_type": "must be an object",
            "list_type": "must be a list",
        }[kind]
    return re.sub(r"^Value error, ", "", str(error.get("msg", "is invalid")))


# ---- writing: Marathon's current form ---------------------------------------------------------


def container_json(
    spec: ContainerSpec, secret_files: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Marathon's `container` as GET shows it (the 1.5 networking API, every default);
    `secret_files` (sandbox path, secret name) are shown as references, never values."""
    data: dict[str, Any] = {"type": spec.type}
    if spec.image:
        docker: dict[str, Any] = {
            "image": spec.image,
            "forcePullImage": spec.force_pull,
            "privileged": spec.privileged,
            "parameters": [{"key": k, "value": v} for k, v in spec.parameters],
        }
        if spec.credential is not None:
            docker["credential"] = {"principal": spec.credential[0], "secret": spec.credential[1]}
        data["docker"] = docker
    data["volumes"] = [
        {"containerPath": v.container_path, "hostPath": v.host_path, "mode": v.mode}
        for v in spec.volumes
    ] + [{"containerPath": path, "secret": name} for path, name in secret_files]
    data["portMappings"] = [_mapping_json(m) for m in spec.port_mappings]
    return data


def _mapping_json(mapping: PortMapping) -> dict[str, Any]:
    data: dict[str, Any] = {
        "containerPort": mapping.container_port,
        "hostPort": mapping.host_port,
        "servicePort": mapping.service_port,
        "protocol": mapping.protocol,
        "labels": dict(mapping.labels),
    }
    if mapping.name is not None:
        data["name"] = mapping.name
    return data
