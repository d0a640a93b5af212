"""Marathon apps and groups: the pure AppSpec, its validation with field paths, versions.

`parse_app(raw)` turns a Marathon app definition (JSON) into an `AppSpec` with Marathon 1.x
defaults, or raises `InvalidApp` naming every bad field (`/cpus`, `/healthChecks/0/port`).
`app_to_json` gives Marathon's JSON back (what `GET /v2/apps/{id}` returns, minus the live
counts); `app_from_json` reads what the store holds. Paths are Marathon's: `/shop/web`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tessera.model.constraints import ConstraintError, parse_constraint
from tessera.model.container import ContainerSpec, PortMapping
from tessera.model.container_input import container_json, read_container
from tessera.model.health import (
    FieldError,
    HealthSpecError,
    fetch_from_uris,
    parse_fetch,
    parse_health_checks,
    parse_readiness_checks,
    port_reference_errors,
)
from tessera.model.secret_refs import read_secrets, reference_error, task_uses
from tessera.model.task import PortDefinition, TaskSpec

# Marathon's rule for one path segment (`^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*...`).
_SEGMENT = re.compile(
    r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$"
)
_PORT_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*\$?$")

# Upper bounds well past any real machine: beyond them a value is a typo, not a request.
MAX_CPUS = 1_000_000.0
MAX_MIB = 1_000_000_000.0
MAX_GPUS = 10_000
MAX_INSTANCES = 100_000
_INT32_MAX = 2**31 - 1

# Fields of Marathon's app JSON that Tessera accepts and keeps or ignores; anything else is
# an unknown field (422). The read-only ones are what GET returns, so a GET can be PUT back.
READ_ONLY_FIELDS = frozenset(
    {
        "version",
        "versionInfo",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "tasks",
        "lastTaskFailure",
        "readinessCheckResults",
        "taskStats",
    }
)
_IGNORED_FIELDS = frozenset(
    {"executor", "storeUrls", "ipAddress", "residency", "tty", "check", "executorResources"}
)
APP_FIELDS = frozenset(
    {
        "id",
        "cmd",
        "args",
        "user",
        "env",
        "instances",
        "cpus",
        "mem",
        "disk",
        "gpus",
        "constraints",
        "uris",
        "fetch",
        "ports",
        "portDefinitions",
        "requirePorts",
        "backoffSeconds",
        "backoffFactor",
        "maxLaunchDelaySeconds",
        "container",
        "healthChecks",
        "readinessChecks",
        "dependencies",
        "upgradeStrategy",
        "labels",
        "acceptedResourceRoles",
        "secrets",
        "taskKillGracePeriodSeconds",
        "unreachableStrategy",
        "killSelection",
        "networks",
        "role",
        "resourceLimits",
        "priority",
    }
    | READ_ONLY_FIELDS
    | _IGNORED_FIELDS
)


DEFAULT_PROGRESS_DEADLINE = 600.0


class KillSelection(StrEnum):
    YOUNGEST_FIRST = "YOUNGEST_FIRST"
    OLDEST_FIRST = "OLDEST_FIRST"


@dataclass(frozen=True, slots=True)
class UpgradeStrategy:
    """How a rolling upgrade replaces instances; `progress_deadline_seconds` is Tessera's:
    a deployment that makes no progress for that long fails and rolls back."""

    minimum_health_capacity: float = 1.0
    maximum_over_capacity: float = 1.0
    progress_deadline_seconds: float = 600.0  # DEFAULT_PROGRESS_DEADLINE

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "minimumHealthCapacity": self.minimum_health_capacity,
            "maximumOverCapacity": self.maximum_over_capacity,
        }
        if self.progress_deadline_seconds != DEFAULT_PROGRESS_DEADLINE:
            # Tessera's own field, shown only when set: Marathon clients reject unknown keys.
            data["progressDeadlineSeconds"] = _whole(self.progress_deadline_seconds)
        return data


_BOUNDS_EPSILON = 1e-9


def strategy_bounds(
    instances: int, minimum_health_capacity: float, maximum_over_capacity: float
) -> tuple[int, int]:
    """Marathon's upgradeStrategy for `instances`: (how many must keep serving, how many may
    run at most), i.e. ceil(n x minimumHealthCapacity) and floor(n x (1 +
    maximumOverCapacity)), rounding the float products' noise away."""
    minimum = math.ceil(instances * minimum_health_capacity - _BOUNDS_EPSILON)
    maximum = math.floor(instances * (1 + maximum_over_capacity) + _BOUNDS_EPSILON)
    return minimum, maximum


@dataclass(frozen=True, slots=True)
class UnreachableStrategy:
    """When an instance on an unreachable agent is replaced (inactive) and forgotten
    (expunged: killed if it ever comes back). Tessera replaces at once (Marathon waits 5
    minutes): the master already waited out the missed heartbeats, a copy that comes back
    is killed within a reconcile pass, and a mass outage is caught by the replacement
    throttle instead. Expunged after 10 minutes, as in Marathon."""

    inactive_after_seconds: float = 0.0
    expunge_after_seconds: float = 600.0

    def to_json(self) -> dict[str, Any]:
        return {
            "inactiveAfterSeconds": _whole(self.inactive_after_seconds),
            "expungeAfterSeconds": _whole(self.expunge_after_seconds),
        }


@dataclass(frozen=True, slots=True)
class AppPort:
    """One `portDefinitions` entry; `port` 0 means any free host port."""

    port: int = 0
    name: str | None = None
    protocol: str = "tcp"
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"port": self.port, "protocol": self.protocol}
        if self.name is not None:
            data["name"] = self.name
        if self.labels:
            data["labels"] = dict(self.labels)
        return data


DEFAULT_PORTS = (AppPort(0, "default"),)


@dataclass(frozen=True, slots=True)
class AppSpec:
    """A Marathon app as Tessera keeps it: every default filled in, ids absolute."""

    id: str
    cmd: str | None = None
    args: tuple[str, ...] | None = None
    cpus: float = 1.0
    mem: float = 128.0
    disk: float = 0.0
    gpus: int = 0
    instances: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    constraints: tuple[tuple[str, ...], ...] = ()
    port_definitions: tuple[AppPort, ...] = DEFAULT_PORTS
    require_ports: bool = False
    health_checks: tuple[Mapping[str, Any], ...] = ()
    readiness_checks: tuple[Mapping[str, Any], ...] = ()
    fetch: tuple[Mapping[str, Any], ...] = ()
    upgrade_strategy: UpgradeStrategy = UpgradeStrategy()
    backoff_seconds: float = 1.0
    backoff_factor: float = 1.15
    max_launch_delay_seconds: float = 300.0
    kill_selection: KillSelection = KillSelection.YOUNGEST_FIRST
    # None is Marathon's "disabled": instances on unreachable agents are never replaced.
    unreachable_strategy: UnreachableStrategy | None = UnreachableStrategy()
    dependencies: tuple[str, ...] = ()
    task_kill_grace_period_seconds: float | None = None
    user: str | None = None
    role: str = "*"
    accepted_resource_roles: tuple[str, ...] | None = None
    priority: int = 0
    container: ContainerSpec | None = None
    # Marathon's `networks` in their current form; () is host networking.
    networks: tuple[Mapping[str, Any], ...] = ()
    # References only (model/secret_refs.py): name -> source path as given; environment
    # variable -> secret name; (sandbox path, secret name) of secret file volumes.
    secrets: Mapping[str, str] = field(default_factory=dict)
    env_secrets: Mapping[str, str] = field(default_factory=dict)
    secret_files: tuple[tuple[str, str], ...] = ()
    version: str = ""
    last_scaling_at: str = ""
    last_config_change_at: str = ""
    # Who made those changes (the principal's uid; "" when unknown, e.g. before auth).
    last_scaling_by: str = ""
    last_config_change_by: str = ""

    def with_changes(self, **changes: Any) -> AppSpec:
        return replace(self, **changes)

    @property
    def bridged(self) -> bool:
        """Runs in a container on the agent's bridge, its ports mapped from host ports."""
        return self.container is not None and self.container.bridged

    @property
    def service_ports(self) -> list[int]:
        """Marathon's `servicePorts`: of the port mappings when bridged, else of the
        port definitions."""
        if self.bridged and self.container is not None:
            return [m.service_port for m in self.container.port_mappings]
        return [p.port for p in self.port_definitions]

    @property
    def config_version(self) -> str:
        """The version of the last change that needs a restart (not a scale)."""
        return self.last_config_change_at or self.version

    def same_config(self, other: AppSpec) -> bool:
        """Equal but for instances and versions: changing only these is a scale."""

        def neutral(app: AppSpec) -> AppSpec:
            return replace(
                app,
                instances=0,
                version="",
                last_scaling_at="",
                last_config_change_at="",
                last_scaling_by="",
                last_config_change_by="",
            )

        return neutral(self) == neutral(other)


class InvalidApp(ValueError):
    """An invalid app or group definition; `errors` lists every bad field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in self.errors))

    def marathon_details(self) -> list[dict[str, Any]]:
        by_path: dict[str, list[str]] = {}
        for error in self.errors:
            by_path.setdefault("/" + error.path.strip("/"), []).append(error.message)
        return [{"path": path, "errors": messages} for path, messages in by_path.items()]


# ---- paths and versions -----------------------------------------------------------------------


def canonical_path(raw: str, base: str = "/") -> str:
    """Absolute, normalised path: relative ids are resolved against `base` (`..` allowed)."""
    parts: list[str] = [] if raw.startswith("/") else [p for p in base.split("/") if p]
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def path_errors(path: str) -> str | None:
    """Why `path` (canonical) is not a valid Marathon id, or None."""
    for segment in path.strip("/").split("/"):
        if not _SEGMENT.fullmatch(segment):
            return (
                f"{segment!r} is not a valid path segment: use lowercase letters, digits, "
                "dashes and dots, starting and ending with a letter or digit"
            )
    return None


def parent_path(path: str) -> str:
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def is_under(path: str, group: str) -> bool:
    """True when `path` is `group` or lies inside it."""
    if group == "/":
        return True
    return path == group or path.startswith(group.rstrip("/") + "/")


def format_version(wall_seconds: float) -> str:
    """Marathon's version format: `2015-08-26T22:33:24.225Z` (sorts as time does)."""
    moment = datetime.fromtimestamp(wall_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_version(version: str) -> float | None:
    try:
        return datetime.fromisoformat(version.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def next_version(now: float, last: str) -> str:
    """A version for `now` that is strictly after `last`, even within one millisecond."""
    candidate = format_version(now)
    if last and candidate <= last:
        previous = parse_version(last) or now
        candidate = format_version(previous + 0.001)
    return candidate


# ---- JSON out ---------------------------------------------------------------------------------


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def app_to_json(app: AppSpec, users: bool = False) -> dict[str, Any]:
    """Marathon's app JSON with every default, as GET returns it (without live counts).

    `users`: versionInfo also says who made the last scaling and config change
    (`lastScalingBy`, `lastConfigChangeBy`): always in the store, in answers only when asked
    for (`embed=app.versionInfo.user`), because Marathon clients refuse keys they do not
    know there."""
    data: dict[str, Any] = {"id": app.id}
    if app.cmd is not None:
        data["cmd"] = app.cmd
    if app.args is not None:
        data["args"] = list(app.args)
    data.update(
        {
            "user": app.user,
            "env": {**app.env, **{k: {"secret": v} for k, v in app.env_secrets.items()}},
            "instances": app.instances,
            "cpus": app.cpus,
            "mem": app.mem,
            "disk": app.disk,
            "gpus": app.gpus,
            "executor": "",
            "constraints": [list(c) for c in app.constraints],
            "uris": [],
            "fetch": [dict(f) for f in app.fetch],
            "storeUrls": [],
            "backoffSeconds": _whole(app.backoff_seconds),
            "backoffFactor": app.backoff_factor,
            "maxLaunchDelaySeconds": _whole(app.max_launch_delay_seconds),
            "container": (
                container_json(app.container, app.secret_files)
                if app.container is not None
                else None
            ),
            "healthChecks": [dict(h) for h in app.health_checks],
            "readinessChecks": [dict(r) for r in app.readiness_checks],
            "dependencies": list(app.dependencies),
            "upgradeStrategy": app.upgrade_strategy.to_json(),
            "labels": dict(app.labels),
            "acceptedResourceRoles": (
                list(app.accepted_resource_roles)
                if app.accepted_resource_roles is not None
                else None
            ),
            "version": app.version,
            "versionInfo": version_info(app, users),
            "killSelection": app.kill_selection.value,
            "unreachableStrategy": (
                app.unreachable_strategy.to_json()
                if app.unreachable_strategy is not None
                else "disabled"
            ),
            "requirePorts": app.require_ports,
            "portDefinitions": [p.to_json() for p in app.port_definitions],
            "networks": [dict(n) for n in app.networks] or [{"mode": "host"}],
            "role": app.role,
        }
    )
    if app.task_kill_grace_period_seconds is not None:
        data["taskKillGracePeriodSeconds"] = _whole(app.task_kill_grace_period_seconds)
    if app.secrets:
        data["secrets"] = {name: {"source": source} for name, source in app.secrets.items()}
    if app.priority:
        # Tessera's own field; left out at 0 because Marathon clients reject unknown keys.
        data["priority"] = app.priority
    return data


def version_info(app: AppSpec, users: bool = False) -> dict[str, str]:
    info = {
        "lastScalingAt": app.last_scaling_at or app.version,
        "lastConfigChangeAt": app.last_config_change_at or app.version,
    }
    if users:
        info["lastScalingBy"] = app.last_scaling_by
        info["lastConfigChangeBy"] = app.last_config_change_by
    return info


def app_from_json(data: Mapping[str, Any]) -> AppSpec:
    """Read an app that was validated before (from the store); keeps its versions."""
    app = parse_app(data)
    info = data.get("versionInfo") or {}
    return app.with_changes(
        version=str(data.get("version") or ""),
        last_scaling_at=str(info.get("lastScalingAt") or ""),
        last_config_change_at=str(info.get("lastConfigChangeAt") or ""),
        last_scaling_by=str(info.get("lastScalingBy") or ""),
        last_config_change_by=str(info.get("lastConfigChangeBy") or ""),
    )


# ---- JSON in: validation ----------------------------------------------------------------------


class _Reader:
    """Reads one JSON object's fields with Marathon's defaults, collecting errors."""

    def __init__(self, raw: Mapping[str, Any], where: str, errors: list[FieldError]) -> None:
        self.raw = raw
        self.where = where.rstrip("/")
        self.errors = errors

    def path(self, name: str | None = None) -> str:
        return f"{self.where}/{name}" if name else self.where or "/"

    def fail(self, name: str | None, message: str) -> None:
        self.errors.append(FieldError(self.path(name), message))

    def number(
        self, name: str, default: float, minimum: float, maximum: float, *, integer: bool = False
    ) -> float:
        value = self.raw.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, "must be a number")
            return default
        if math.isnan(value) or math.isinf(value):
            self.fail(name, "must be a finite number")
            return default
        if integer and not float(value).is_integer():
            self.fail(name, "must be a whole number")
            return default
        if value < minimum:
            self.fail(name, f"must be ≥ {_whole(minimum)}")
            return default
        if value > maximum:
            self.fail(name, f"must be ≤ {_whole(maximum)}")
            return default
        return float(value)

    def integer(self, name: str, default: int, minimum: int, maximum: int = _INT32_MAX) -> int:
        return int(self.number(name, default, minimum, maximum, integer=True))

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, "must be true or false")
            return default
        return value

    def string(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return None
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self.raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(name, "must be an object of strings")
            return {}
        found: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{name}/{key}", "must be a string")
            else:
                found[str(key)] = item
        return found

    def string_list(self, name: str) -> list[str] | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            self.fail(name, "must be a list of strings")
            return None
        items: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}/{index}", "must be a string")
            else:
                items.append(item)
        return items


def parse_app(raw: object, where: str = "", base: str = "/") -> AppSpec:
    """Validate a Marathon app definition; relative ids resolve against group `base`."""
    errors: list[FieldError] = []
    if not isinstance(raw, Mapping):
        raise InvalidApp([FieldError(where or "/", "must be a JSON object")])
    app = _read_app(_Reader(raw, where, errors), base)
    if errors:
        raise InvalidApp(errors)
    return app


def _read_app(reader: _Reader, base: str) -> AppSpec:
    raw = reader.raw
    for name in raw:
        if name not in APP_FIELDS:
            reader.fail(str(name), "unknown field")
    app_id = _read_id(reader, base)
    parent = parent_path(app_id) if app_id != "/" else "/"
    cmd = reader.string("cmd")
    if cmd is not None and not cmd.strip():
        reader.fail("cmd", "must not be empty")
    args = reader.string_list("args")
    reading = read_container(raw.get("container"), raw.get("networks"), reader.where)
    reader.errors.extend(reading.errors)
    container = reading.container
    # An invalid container has its own errors; then a missing cmd is no news.
    runs_image = raw.get("container") is not None and (container is None or bool(container.image))
    if (cmd is not None and args is not None) or (cmd is None and args is None and not runs_image):
        reader.fail(
            None,
            "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
        )
    ports = _read_bridged_ports(reader) if reading.bridged else _read_ports(reader)
    port_names = (
        [m.name for m in container.port_mappings]
        if container is not None and reading.bridged
        else [p.name for p in ports]
    )
    health_checks, readiness_checks, fetch = _read_checks(reader, port_names)
    secrets = read_secrets(raw.get("secrets"), app_id, reader.path("secrets"), _failing(reader))
    env, env_secrets = _read_env(reader, secrets)
    secret_files = _read_secret_files(reader, reading.secret_files, secrets)
    return AppSpec(
        id=app_id,
        cmd=cmd,
        args=tuple(args) if args is not None else None,
        cpus=reader.number("cpus", 1.0, 0.001, MAX_CPUS),
        mem=reader.number("mem", 128.0, 0.0, MAX_MIB),
        disk=reader.number("disk", 0.0, 0.0, MAX_MIB),
        gpus=reader.integer("gpus", 0, 0, MAX_GPUS),
        instances=reader.integer("instances", 1, 0, MAX_INSTANCES),
        env=env,
        labels=reader.string_map("labels"),
        constraints=_read_constraints(reader),
        port_definitions=ports,
        require_ports=reader.boolean("requirePorts", False),
        health_checks=health_checks,
        readiness_checks=readiness_checks,
        fetch=fetch,
        upgrade_strategy=_read_upgrade(reader),
        backoff_seconds=reader.number("backoffSeconds", 1.0, 0.0, 86400.0),
        backoff_factor=reader.number("backoffFactor", 1.15, 1.0, 1000.0),
        max_launch_delay_seconds=reader.number("maxLaunchDelaySeconds", 300.0, 0.0, 86400.0),
        kill_selection=_read_kill_selection(reader),
        unreachable_strategy=_read_unreachable(reader),
        dependencies=_read_dependencies(reader, parent),
        task_kill_grace_period_seconds=_optional_grace(reader),
        user=_read_user(reader),
        role=_read_role(reader),
        accepted_resource_roles=_read_roles(reader),
        priority=reader.integer("priority", 0, -1000, 1000),
        container=container,
        networks=reading.networks,
        secrets=secrets,
        env_secrets=env_secrets,
        secret_files=secret_files,
    )


def _read_id(reader: _Reader, base: str) -> str:
    raw_id = reader.raw.get("id")
    if raw_id is None:
        reader.fail("id", "is required")
        return "/"
    if not isinstance(raw_id, str) or not raw_id.strip("/ "):
        reader.fail("id", "must be a non-empty path such as /shop/web")
        return "/"
    app_id = canonical_path(raw_id, base)
    problem = path_errors(app_id) if app_id != "/" else "the root group is not an app"
    if problem:
        reader.fail("id", problem)
    return app_id


def _read_env(reader: _Reader, secrets: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Plain variables, and variables that reference a declared secret by name."""
    value = reader.raw.get("env")
    if value is None:
        return {}, {}
    if not isinstance(value, Mapping):
        reader.fail("env", "must be an object of strings")
        return {}, {}
    env: dict[str, str] = {}
    env_secrets: dict[str, str] = {}
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(str(key)):
            reader.fail(f"env/{key}", "is not a valid environment variable name")
        elif isinstance(item, Mapping):
            name = item.get("secret")
            problem = (
                'must be a string or {"secret": "<name>"}'
                if set(item) != {"secret"}
                else reference_error(name, secrets)
            )
            if problem:
                reader.fail(f"env/{key}", problem)
            else:
                env_secrets[str(key)] = str(name)
        elif not isinstance(item, str):
            reader.fail(f"env/{key}", "must be a string")
        else:
            env[str(key)] = item
    return env, env_secrets


def _read_secret_files(
    reader: _Reader, volumes: Sequence[tuple[int, str, str]], secrets: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for index, path, name in volumes:
        problem = reference_error(name, secrets)
        if problem:
            reader.fail(f"container/volumes/{index}/secret", problem)
        else:
            found.append((path, name))
    if len({path for path, _ in found}) != len(found):
        reader.fail("container/volumes", "two secret volumes have the same containerPath")
    return tuple(found)


def _failing(reader: _Reader) -> Callable[[str, str], None]:
    """`reader.fail` for helpers that report absolute field paths."""

    def fail(path: str, message: str) -> None:
        reader.errors.append(FieldError(path, message))

    return fail


def _read_constraints(reader: _Reader) -> tuple[tuple[str, ...], ...]:
    value = reader.raw.get("constraints")
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        reader.fail("constraints", "must be a list of [field, operator, value?]")
        return ()
    found: list[tuple[str, ...]] = []
    for index, item in enumerate(value):
        try:
            constraint = parse_constraint(item, "constraint")
        except ConstraintError as error:
            reader.fail(f"constraints/{index}", str(error))
            continue
        # Keep the user's spelling (`@hostname`), as Marathon returns it.
        shown = [str(part) for part in item]
        found.append(tuple(shown[:2] + ([constraint.value] if constraint.value else [])))
    if len(set(found)) != len(found):
        reader.fail("constraints", "must not repeat a constraint")
    return tuple(found)


def _read_ports(reader: _Reader) -> tuple[AppPort, ...]:
    raw = reader.raw
    if raw.get("portDefinitions") is not None:
        return _read_port_definitions(reader)
    legacy = raw.get("ports")
    if legacy is None:
        return DEFAULT_PORTS
    if isinstance(legacy, (str, bytes)) or not isinstance(legacy, Sequence):
        reader.fail("ports", "must be a list of port numbers")
        return ()
    ports = []
    for index, port in enumerate(legacy):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            reader.fail(f"ports/{index}", "must be a port number (0 to 65535)")
        else:
            ports.append(AppPort(port))
    return tuple(ports)


def _read_bridged_ports(reader: _Reader) -> tuple[AppPort, ...]:
    """A bridged app's ports are its port mappings: it has no port definitions."""
    for name in ("portDefinitions", "ports"):
        value = reader.raw.get(name)
        if value is not None and value != []:
            reader.fail(name, f"{name} are only allowed with host-networking")
    return ()


def _read_port_definitions(reader: _Reader) -> tuple[AppPort, ...]:
    value = reader.raw["portDefinitions"]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        reader.fail("portDefinitions", "must be a list")
        return ()
    ports: list[AppPort] = []
    for index, item in enumerate(value):
        where = f"{reader.where}/portDefinitions/{index}"
        if not isinstance(item, Mapping):
            reader.fail(f"portDefinitions/{index}", "must be an object")
            continue
        sub = _Reader(item, where, reader.errors)
        for name in item:
            if name not in ("port", "name", "protocol", "labels"):
                sub.fail(str(name), "unknown field")
        name = sub.string("name")
        if name is not None and not (_PORT_NAME.fullmatch(name) and len(name) <= 63):
            sub.fail("name", "must match ^[a-z0-9][a-z0-9-]*$ (at most 63 characters)")
        protocol = sub.string("protocol") or "tcp"
        if protocol not in ("tcp", "udp", "udp,tcp", "tcp,udp"):
            sub.fail("protocol", "must be tcp, udp or udp,tcp")
        ports.append(
            AppPort(
                port=sub.integer("port", 0, 0, 65535),
                name=name,
                protocol=protocol,
                labels=sub.string_map("labels"),
            )
        )
    names = [p.name for p in ports if p.name]
    if len(names) != len(set(names)):
        reader.fail("portDefinitions", "Port names must be unique.")
    fixed = [p.port for p in ports if p.port]
    if len(fixed) != len(set(fixed)):
        reader.fail("portDefinitions", "Ports must be unique.")
    return tuple(ports)


def _read_checks(
    reader: _Reader, port_names: Sequence[str | None]
) -> tuple[
    tuple[Mapping[str, Any], ...], tuple[Mapping[str, Any], ...], tuple[Mapping[str, Any], ...]
]:
    base = reader.where.strip("/")
    prefix = f"{base}/" if base else ""
    raw = reader.raw
    health: tuple[Mapping[str, Any], ...] = ()
    readiness: tuple[Mapping[str, Any], ...] = ()
    fetch: tuple[Mapping[str, Any], ...] = ()
    try:
        checks = parse_health_checks(raw.get("healthChecks"), f"{prefix}healthChecks")
        ready = parse_readiness_checks(raw.get("readinessChecks"), f"{prefix}readinessChecks")
        reader.errors.extend(
            port_reference_errors(
                checks,
                ready,
                port_names,
                f"{prefix}healthChecks",
                f"{prefix}readinessChecks",
            )
        )
        health = tuple(check.to_json() for check in checks)
        readiness = tuple(check.to_json() for check in ready)
    except HealthSpecError as error:
        reader.errors.extend(error.errors)
    try:
        if raw.get("fetch") is not None:
            fetch = tuple(uri.to_json() for uri in parse_fetch(raw["fetch"], f"{prefix}fetch"))
        elif raw.get("uris"):
            fetch = tuple(uri.to_json() for uri in fetch_from_uris(raw["uris"], f"{prefix}uris"))
    except HealthSpecError as error:
        reader.errors.extend(error.errors)
    return health, readiness, fetch


def _read_upgrade(reader: _Reader) -> UpgradeStrategy:
    value = reader.raw.get("upgradeStrategy")
    if value is None:
        return UpgradeStrategy()
    if not isinstance(value, Mapping):
        reader.fail("upgradeStrategy", "must be an object")
        return UpgradeStrategy()
    sub = _Reader(value, f"{reader.where}/upgradeStrategy", reader.errors)
    for name in value:
        if name not in ("minimumHealthCapacity", "maximumOverCapacity", "progressDeadlineSeconds"):
            sub.fail(str(name), "unknown field")
    return UpgradeStrategy(
        minimum_health_capacity=sub.number("minimumHealthCapacity", 1.0, 0.0, 1.0),
        maximum_over_capacity=sub.number("maximumOverCapacity", 1.0, 0.0, 1.0),
        progress_deadline_seconds=sub.number("progressDeadlineSeconds", 600.0, 1.0, 7 * 86400.0),
    )


def _read_kill_selection(reader: _Reader) -> KillSelection:
    value = reader.raw.get("killSelection")
    if value is None:
        return KillSelection.YOUNGEST_FIRST
    try:
        return KillSelection(value)
    except ValueError:
        reader.fail("killSelection", "must be YOUNGEST_FIRST or OLDEST_FIRST")
        return KillSelection.YOUNGEST_FIRST


def _read_unreachable(reader: _Reader) -> UnreachableStrategy | None:
    value = reader.raw.get("unreachableStrategy")
    if value is None:
        return UnreachableStrategy()
    if value == "disabled":
        return None
    if not isinstance(value, Mapping):
        reader.fail("unreachableStrategy", 'must be "disabled" or an object')
        return UnreachableStrategy()
    sub = _Reader(value, f"{reader.where}/unreachableStrategy", reader.errors)
    for name in value:
        if name not in ("inactiveAfterSeconds", "expungeAfterSeconds"):
            sub.fail(str(name), "unknown field")
    default = UnreachableStrategy()
    inactive = sub.number(
        "inactiveAfterSeconds", default.inactive_after_seconds, 0.0, 365 * 86400.0
    )
    expunge = sub.number(
        "expungeAfterSeconds", max(inactive, default.expunge_after_seconds), 0.0, 365 * 86400.0
    )
    if expunge < inactive:
        sub.fail("expungeAfterSeconds", "must be at least inactiveAfterSeconds")
    return UnreachableStrategy(inactive, expunge)


def _read_dependencies(reader: _Reader, parent: str) -> tuple[str, ...]:
    items = reader.string_list("dependencies") or []
    found: list[str] = []
    for index, item in enumerate(items):
        path = canonical_path(item, parent)
        problem = path_errors(path) if path != "/" else None
        if problem:
            reader.fail(f"dependencies/{index}", problem)
        elif path not in found:
            found.append(path)
    return tuple(found)


def _optional_grace(reader: _Reader) -> float | None:
    if reader.raw.get("taskKillGracePeriodSeconds") is None:
        return None
    return reader.number("taskKillGracePeriodSeconds", 3.0, 0.0, 3600.0)


def _read_user(reader: _Reader) -> str | None:
    user = reader.string("user")
    if user is not None and not (_USER.fullmatch(user) and len(user) <= 32):
        reader.fail("user", "is not a valid user name")
        return None
    return user


def _read_role(reader: _Reader) -> str:
    role = reader.string("role")
    if role is None:
        return "*"
    if not role or role in (".", "..") or any(c.isspace() or c in "/\\" for c in role):
        reader.fail("role", "is not a valid role name")
        return "*"
    return role


def _read_roles(reader: _Reader) -> tuple[str, ...] | None:
    roles = reader.string_list("acceptedResourceRoles")
    return tuple(roles) if roles is not None else None


# ---- merging updates ---------------------------------------------------------------------------


def merge_update(current: AppSpec, update: Mapping[str, Any]) -> dict[str, Any]:
    """Marathon's partial update: the fields given replace the current ones."""
    merged = app_to_json(current)
    for name in ("version", "versionInfo"):
        merged.pop(name, None)
    for name, value in update.items():
        if name in READ_ONLY_FIELDS:
            continue
        merged[name] = value
    if "cmd" in update and update["cmd"] is not None:
        merged.pop("args", None)
    if "args" in update and update["args"] is not None:
        merged.pop("cmd", None)
    if "portDefinitions" not in update and "ports" in update:
        merged.pop("portDefinitions", None)
    if "fetch" not in update and "uris" in update:
        merged.pop("fetch", None)
    _merge_networking(merged, update)
    return merged


def _merge_networking(merged: dict[str, Any], update: Mapping[str, Any]) -> None:
    """A change between host and bridge networking brings its own ports: drop the
    current app's ports of the other kind unless the update gives them."""
    container = merged.get("container")
    docker = container.get("docker") if isinstance(container, Mapping) else None
    legacy = docker.get("network") if isinstance(docker, Mapping) else None
    if legacy is not None and "networks" not in update:
        merged.pop("networks", None)
    networks = merged.get("networks")
    bridged = legacy == "BRIDGE" or (
        isinstance(networks, Sequence)
        and any(isinstance(n, Mapping) and n.get("mode") == "container/bridge" for n in networks)
    )
    if bridged and "portDefinitions" not in update and "ports" not in update:
        merged.pop("portDefinitions", None)
    if (
        not bridged
        and "container" not in update
        and isinstance(container, Mapping)
        and container.get("portMappings")
    ):
        merged["container"] = {**container, "portMappings": []}


# ---- service ports -----------------------------------------------------------------------------

# Marathon's --local_port_min/--local_port_max: where service ports come from.
SERVICE_PORTS = range(10000, 20000)


def assign_service_ports(app: AppSpec, previous: AppSpec | None, taken: set[int]) -> AppSpec:
    """Give every `port: 0` definition (every `servicePort: 0` mapping of a bridged app) a
    cluster-unique service port (what load balancers such as Marathon-LB listen on),
    keeping the ones the app had; `taken` is updated."""
    if app.bridged and app.container is not None:
        return _assign_mapping_service_ports(app, app.container, previous, taken)
    if app.require_ports or not any(p.port == 0 for p in app.port_definitions):
        taken.update(p.port for p in app.port_definitions)
        return app
    before = previous.port_definitions if previous is not None else ()
    free = (port for port in SERVICE_PORTS if port not in taken)
    ports: list[AppPort] = []
    for index, definition in enumerate(app.port_definitions):
        port = definition.port
        if port == 0 and index < len(before) and before[index].port not in taken:
            port = before[index].port
        if port == 0:
            port = next(free, 0)
        taken.add(port)
        ports.append(replace(definition, port=port))
    return app.with_changes(port_definitions=tuple(ports))


def _assign_mapping_service_ports(
    app: AppSpec, container: ContainerSpec, previous: AppSpec | None, taken: set[int]
) -> AppSpec:
    mappings = container.port_mappings
    taken.update(m.service_port for m in mappings if m.service_port)
    if all(m.service_port for m in mappings):
        return app
    before = previous.service_ports if previous is not None and previous.bridged else []
    free = (port for port in SERVICE_PORTS if port not in taken)
    assigned: list[PortMapping] = []
    for index, mapping in enumerate(mappings):
        port = mapping.service_port
        if port == 0 and index < len(before) and before[index] and before[index] not in taken:
            port = before[index]
        if port == 0:
            port = next(free, 0)
        taken.add(port)
        assigned.append(replace(mapping, service_port=port))
    return app.with_changes(container=replace(container, port_mappings=tuple(assigned)))


# ---- the task an instance runs ------------------------------------------------------------------


def task_spec_for(app: AppSpec) -> TaskSpec:
    """What every instance of this app version runs.

    A bridged container asks for one host port per port mapping, in their order: a fixed
    `hostPort` exactly, 0 any free one (the request's `require_ports` keeps fixed ports
    fixed and draws the zeros)."""
    container = app.container if app.container is not None and app.container.image else None
    if container is not None and container.bridged:
        ports = tuple(
            PortDefinition(m.host_port, m.name, m.protocol) for m in container.port_mappings
        )
        require_ports = True
    else:
        ports = tuple(
            PortDefinition(p.port if app.require_ports else 0, p.name, _task_protocol(p.protocol))
            for p in app.port_definitions
        )
        require_ports = app.require_ports
    return TaskSpec(
        name=app.id.strip("/").replace("/", "."),
        cmd=app.cmd,
        args=app.args,
        cpus=app.cpus,
        mem=app.mem,
        disk=app.disk,
        gpus=app.gpus,
        env=dict(app.env),
        port_definitions=ports,
        require_ports=require_ports,
        constraints=app.constraints,
        user=app.user,
        kill_grace_seconds=(
            app.task_kill_grace_period_seconds
            if app.task_kill_grace_period_seconds is not None
            else 3.0
        ),
        app_id=app.id,
        app_version=app.version,
        role=app.role,
        priority=app.priority,
        labels=dict(app.labels),
        health_checks=app.health_checks,
        readiness_checks=app.readiness_checks,
        fetch=app.fetch,
        container=container,
        secrets=task_uses(app.secrets, app.env_secrets, app.secret_files),
    )


def _task_protocol(protocol: str) -> str:
    return "udp,tcp" if protocol == "tcp,udp" else protocol
