"""Marathon's healthChecks, readinessChecks and fetch entries: parsed, validated, defaulted.

Pure value types for the API edge (which turns `HealthSpecError` into a 422) and for the
agent that runs the checks and fetches the URIs. Defaults are Marathon 1.x's:

- health check: protocol HTTP, gracePeriodSeconds 300, intervalSeconds 60, timeoutSeconds
  20, maxConsecutiveFailures 3, delaySeconds 15, ignoreHttp1xx false, ipProtocol IPv4, and
  portIndex 0 when a check that needs a port names neither `port` nor `portIndex`;
- readiness check: name "readinessCheck", protocol HTTP, path "/", portName "http-api",
  intervalSeconds 30, timeoutSeconds 10, httpStatusCodesForReady [200],
  preserveLastResponse false;
- fetch: extract true, executable false, cache false.

Usage at the API edge::

    try:
        checks = parse_health_checks(body.get("healthChecks", []), "healthChecks")
        readiness = parse_readiness_checks(body.get("readinessChecks", []), "readinessChecks")
        artifacts = parse_fetch(body.get("fetch", []), "fetch")
        errors = port_reference_errors(checks, readiness, port_names)
    except HealthSpecError as error:
        ...  # error.marathon_details() is the 422's "details" list

Every error carries the field path built from `where`, e.g. `healthChecks/0/portIndex`.
`to_json()` gives Marathon's JSON back with every default filled in (what GET returns);
`parse_*(x.to_json())` round-trips.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from tessera.model.task import Task

_INT32_MAX = 2**31 - 1
_PORT_NAME = re.compile(r"^[a-z][-a-z0-9]*$")
_URI_MAX = 1024

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: `path` like `healthChecks/0/portIndex`, `message` what is wrong."""

    path: str
    message: str


class HealthSpecError(ValueError):
    """Invalid healthChecks / readinessChecks / fetch; `errors` lists every bad field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in self.errors))

    def marathon_details(self) -> list[dict[str, Any]]:
        """The `details` of Marathon's 422 body: `[{"path": "/x/0/y", "errors": [...]}]`."""
        by_path: dict[str, list[str]] = {}
        for error in self.errors:
            by_path.setdefault("/" + error.path.lstrip("/"), []).append(error.message)
        return [{"path": path, "errors": messages} for path, messages in by_path.items()]


class HealthProtocol(StrEnum):
    """HTTP, HTTPS and TCP were Marathon-run; the MESOS_ forms agent-run. Tessera runs all
    of them on the agent, next to the task."""

    HTTP = "HTTP"
    HTTPS = "HTTPS"
    TCP = "TCP"
    COMMAND = "COMMAND"
    MESOS_HTTP = "MESOS_HTTP"
    MESOS_HTTPS = "MESOS_HTTPS"
    MESOS_TCP = "MESOS_TCP"

    @property
    def is_http(self) -> bool:
        return self in _HTTP_PROTOCOLS

    @property
    def is_tcp(self) -> bool:
        return self in (HealthProtocol.TCP, HealthProtocol.MESOS_TCP)

    @property
    def scheme(self) -> str:
        return "https" if self in (HealthProtocol.HTTPS, HealthProtocol.MESOS_HTTPS) else "http"

    @property
    def mesos_native(self) -> bool:
        """Mesos-run in Marathon (COMMAND too): the only ones that honour delaySeconds."""
        return self not in (HealthProtocol.HTTP, HealthProtocol.HTTPS, HealthProtocol.TCP)


_HTTP_PROTOCOLS = frozenset(
    {
        HealthProtocol.HTTP,
        HealthProtocol.HTTPS,
        HealthProtocol.MESOS_HTTP,
        HealthProtocol.MESOS_HTTPS,
    }
)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One Marathon health check (`healthChecks[i]`); times are whole seconds as in Marathon.

    A port check uses exactly one of `port_index` (into the task's host ports) and `port`.
    `command` is the shell command of a COMMAND check (Marathon's `command.value`).
    """

    protocol: HealthProtocol = HealthProtocol.HTTP
    path: str | None = None
    port_index: int | None = None
    port: int | None = None
    command: str | None = None
    grace_period_seconds: int = 300
    interval_seconds: int = 60
    timeout_seconds: int = 20
    max_consecutive_failures: int = 3
    delay_seconds: int = 15
    ignore_http1xx: bool = False
    ip_protocol: str = "IPv4"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "protocol": self.protocol.value,
            "gracePeriodSeconds": self.grace_period_seconds,
            "intervalSeconds": self.interval_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "maxConsecutiveFailures": self.max_consecutive_failures,
            "delaySeconds": self.delay_seconds,
        }
        if self.protocol is HealthProtocol.COMMAND:
            data["command"] = {"value": self.command}
            return data
        if self.port_index is not None:
            data["portIndex"] = self.port_index
        if self.port is not None:
            data["port"] = self.port
        if self.protocol.is_http:
            if self.path is not None:
                data["path"] = self.path
            data["ignoreHttp1xx"] = self.ignore_http1xx
        data["ipProtocol"] = self.ip_protocol
        return data

    def target_port(self, host_ports: Sequence[int]) -> int | None:
        """The port to probe given the task's host ports; None when `port_index` is past them."""
        if self.port is not None:
            return self.port
        index = self.port_index or 0
        return host_ports[index] if index < len(host_ports) else None


class ReadinessProtocol(StrEnum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """One Marathon readiness check (`readinessChecks[i]`): gates deployments only."""

    name: str = "readinessCheck"
    protocol: ReadinessProtocol = ReadinessProtocol.HTTP
    path: str = "/"
    port_name: str = "http-api"
    interval_seconds: int = 30
    timeout_seconds: int = 10
    http_status_codes_for_ready: tuple[int, ...] = (200,)
    preserve_last_response: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol.value,
            "path": self.path,
            "portName": self.port_name,
            "intervalSeconds": self.interval_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "httpStatusCodesForReady": list(self.http_status_codes_for_ready),
            "preserveLastResponse": self.preserve_last_response,
        }


@dataclass(frozen=True, slots=True)
class FetchUri:
    """One `fetch` entry: downloaded into the sandbox before the task starts.

    `extract` unpacks archives (by file name: .tar, .tar.gz, .tgz, .tar.bz2, .tbz2, .tar.xz,
    .txz, .zip) and keeps other files as they are, like the Mesos fetcher. `dest_path` is
    the file name inside the sandbox (default: the URI's last path component).
    """

    uri: str
    extract: bool = True
    executable: bool = False
    cache: bool = False
    dest_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "uri": self.uri,
            "extract": self.extract,
            "executable": self.executable,
            "cache": self.cache,
        }
        if self.dest_path is not None:
            data["destPath"] = self.dest_path
        return data

    @property
    def is_archive(self) -> bool:
        name = (self.dest_path or self.uri.split("?", 1)[0]).lower()
        return name.endswith(ARCHIVE_SUFFIXES)


# ---- parsing --------------------------------------------------------------------------------

T = TypeVar("T")


class _Fields:
    """Reads one JSON object's fields, collecting errors under `where` instead of raising."""

    def __init__(self, raw: Mapping[str, Any], where: str, errors: list[FieldError]) -> None:
        self.raw = raw
        self.where = where
        self.errors = errors

    def fail(self, name: str | None, message: str) -> None:
        path = f"{self.where}/{name}" if name else self.where
        self.errors.append(FieldError(path, message))

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int = _INT32_MAX) -> int:
        value = self.raw.get(name, default)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, "must be an integer")
            return default
        if not minimum <= value <= maximum:
            self.fail(name, f"must be between {minimum} and {maximum}")
            return default
        return value

    def optional_integer(self, name: str, minimum: int, maximum: int) -> int | None:
        if self.raw.get(name) is None:
            return None
        return self.integer(name, minimum, minimum, maximum)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, "must be true or false")
            return default
        return value

    def string(self, name: str, default: str | None, max_length: int = _URI_MAX) -> str | None:
        value = self.raw.get(name, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return default
        if not 1 <= len(value) <= max_length:
            self.fail(name, f"must be 1 to {max_length} characters long")
            return default
        return value

    def choice(self, name: str, enum: Callable[[str], T], default: T, allowed: Iterable[str]) -> T:
        value = self.raw.get(name)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            self.fail(name, f"must be one of {', '.join(allowed)}")
            return default


def _entries(
    raw: object, where: str, errors: list[FieldError]
) -> list[tuple[str, Mapping[str, Any]]]:
    """The objects of a JSON list, each with its path; records errors for what is not one."""
    if raw is None:
        return []
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        errors.append(FieldError(where, "must be a list"))
        return []
    found = []
    for index, item in enumerate(raw):
        path = f"{where}/{index}"
        if isinstance(item, Mapping):
            found.append((path, item))
        else:
            errors.append(FieldError(path, "must be an object"))
    return found


def _raise_if(errors: list[FieldError]) -> None:
    if errors:
        raise HealthSpecError(errors)


def parse_health_checks(raw: object, where: str = "healthChecks") -> tuple[HealthCheck, ...]:
    """Marathon `healthChecks` JSON (a list, or None) -> HealthChecks with Marathon's
    defaults. Raises HealthSpecError naming every bad field (`healthChecks/0/portIndex`).
    Whether `portIndex` addresses one of the app's ports is `port_reference_errors`' job."""
    errors: list[FieldError] = []
    checks = tuple(
        _health_check(_Fields(item, path, errors)) for path, item in _entries(raw, where, errors)
    )
    _raise_if(errors)
    return checks


def parse_health_check(raw: object, where: str = "healthCheck") -> HealthCheck:
    """One health check object; see `parse_health_checks`."""
    errors: list[FieldError] = []
    if not isinstance(raw, Mapping):
        raise HealthSpecError([FieldError(where, "must be an object")])
    check = _health_check(_Fields(raw, where, errors))
    _raise_if(errors)
    return check


def _health_check(fields: _Fields) -> HealthCheck:
    # A check with a command and no protocol is a COMMAND check, as Marathon reads it.
    implied = HealthProtocol.COMMAND if "command" in fields.raw else HealthProtocol.HTTP
    protocol = fields.choice("protocol", HealthProtocol, implied, (p.value for p in HealthProtocol))
    command = _command(fields)
    if protocol is HealthProtocol.COMMAND and command is None:
        fields.fail("command", "a COMMAND health check needs command.value")
    if protocol is not HealthProtocol.COMMAND and "command" in fields.raw and command:
        fields.fail("command", "command is only allowed with protocol COMMAND")
    path = fields.string("path", None)
    if path is not None and not protocol.is_http:
        fields.fail("path", f"path is only allowed with HTTP checks, not {protocol.value}")
    elif path is not None and not path.startswith("/"):
        fields.fail("path", "must start with /")
    port_index = fields.optional_integer("portIndex", 0, 65535)
    port = fields.optional_integer("port", 0, 65535)
    if protocol is HealthProtocol.COMMAND:
        # Marathon ignores ports on command checks (they probe nothing).
        port_index = port = None
    elif port_index is not None and port is not None:
        fields.fail(None, "HealthCheck must specify either a port or a portIndex")
    elif port_index is None and port is None:
        port_index = 0  # Marathon's normalization: the task's first port
    return HealthCheck(
        protocol=protocol,
        path=path if protocol.is_http else None,
        port_index=port_index,
        port=port,
        command=command if protocol is HealthProtocol.COMMAND else None,
        grace_period_seconds=fields.integer("gracePeriodSeconds", 300),
        interval_seconds=fields.integer("intervalSeconds", 60),
        timeout_seconds=fields.integer("timeoutSeconds", 20),
        max_consecutive_failures=fields.integer("maxConsecutiveFailures", 3),
        delay_seconds=fields.integer("delaySeconds", 15),
        ignore_http1xx=fields.boolean("ignoreHttp1xx", False),
        ip_protocol=_ip_protocol(fields),
    )


def _ip_protocol(fields: _Fields) -> str:
    value = fields.raw.get("ipProtocol")
    if value is None:
        return "IPv4"
    if value not in ("IPv4", "IPv6"):
        fields.fail("ipProtocol", "must be one of IPv4, IPv6")
        return "IPv4"
    return str(value)


def _command(fields: _Fields) -> str | None:
    raw = fields.raw.get("command")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        fields.fail("command", 'must be an object like {"value": "curl -f localhost"}')
        return None
    value = raw.get("value")
    if not isinstance(value, str) or not value.strip():
        fields.fail("command/value", "must be a non-empty string")
        return None
    return value


def parse_readiness_checks(
    raw: object, where: str = "readinessChecks"
) -> tuple[ReadinessCheck, ...]:
    """Marathon `readinessChecks` JSON -> ReadinessChecks with Marathon's defaults.

    Marathon's rules: at most one readiness check per app, timeoutSeconds > 0 and shorter
    than intervalSeconds, status codes 100..999 and not empty. That `portName` names one of
    the app's ports is `port_reference_errors`' job.
    """
    errors: list[FieldError] = []
    entries = _entries(raw, where, errors)
    if len(entries) > 1:
        errors.append(FieldError(where, "an app may have at most one readiness check"))
    checks = tuple(_readiness_check(_Fields(item, path, errors)) for path, item in entries)
    _raise_if(errors)
    return checks


def _readiness_check(fields: _Fields) -> ReadinessCheck:
    defaults = ReadinessCheck()
    name = fields.string("name", defaults.name, 256) or defaults.name
    path = fields.string("path", defaults.path) or defaults.path
    if not path.startswith("/"):
        fields.fail("path", "must start with /")
    port_name = fields.string("portName", defaults.port_name, 63) or defaults.port_name
    if not _PORT_NAME.match(port_name):
        fields.fail("portName", "must match ^[a-z][-a-z0-9]*$")
    interval = fields.integer("intervalSeconds", defaults.interval_seconds)
    timeout = fields.integer("timeoutSeconds", defaults.timeout_seconds)
    if timeout <= 0:
        fields.fail("timeoutSeconds", "must be greater than 0")
    elif timeout >= interval:
        fields.fail("timeoutSeconds", "must be shorter than intervalSeconds")
    return ReadinessCheck(
        name=name,
        protocol=fields.choice(
            "protocol", ReadinessProtocol, ReadinessProtocol.HTTP, ("HTTP", "HTTPS")
        ),
        path=path,
        port_name=port_name,
        interval_seconds=interval,
        timeout_seconds=timeout,
        http_status_codes_for_ready=_status_codes(fields),
        preserve_last_response=fields.boolean("preserveLastResponse", False),
    )


def _status_codes(fields: _Fields) -> tuple[int, ...]:
    name = "httpStatusCodesForReady"
    raw = fields.raw.get(name)
    if raw is None:
        return (200,)
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
        fields.fail(name, "must be a non-empty list of HTTP status codes")
        return (200,)
    codes: list[int] = []
    for index, code in enumerate(raw):
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 999:
            fields.fail(f"{name}/{index}", "must be an HTTP status code (100 to 999)")
        elif code not in codes:
            codes.append(code)
    return tuple(codes) or (200,)


def parse_fetch(raw: object, where: str = "fetch") -> tuple[FetchUri, ...]:
    """Marathon `fetch` JSON -> FetchUris (extract true, executable false, cache false).

    URIs: http://, https://, file:// and absolute paths. `destPath` must stay inside the
    sandbox (relative, no `..`).
    """
    errors: list[FieldError] = []
    uris = tuple(
        _fetch_uri(_Fields(item, path, errors)) for path, item in _entries(raw, where, errors)
    )
    _raise_if(errors)
    return uris


def fetch_from_uris(raw: object, where: str = "uris") -> tuple[FetchUri, ...]:
    """Marathon's deprecated `uris` (a list of strings) as fetch entries with the defaults."""
    errors: list[FieldError] = []
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise HealthSpecError([FieldError(where, "must be a list of URIs")])
    entries = []
    for index, uri in enumerate(raw):
        entries.append(_fetch_uri(_Fields({"uri": uri}, f"{where}/{index}", errors)))
    _raise_if(errors)
    return tuple(entries)


_SCHEMES = ("http://", "https://", "file://")


def _fetch_uri(fields: _Fields) -> FetchUri:
    uri = fields.string("uri", None)
    if uri is None and fields.raw.get("uri") is None:
        fields.fail("uri", "is required")
    elif uri is not None and not (uri.lower().startswith(_SCHEMES) or uri.startswith("/")):
        fields.fail("uri", "must be an http://, https:// or file:// URI or an absolute path")
    dest_path = fields.string("destPath", None)
    if dest_path is not None and not _inside(dest_path):
        fields.fail("destPath", "must be a relative path inside the sandbox")
    return FetchUri(
        uri=uri or "",
        extract=fields.boolean("extract", True),
        executable=fields.boolean("executable", False),
        cache=fields.boolean("cache", False),
        dest_path=dest_path,
    )


def _inside(relative: str) -> bool:
    parts = relative.split("/")
    return not relative.startswith("/") and ".." not in parts and "\0" not in relative


# ---- cross-field checks against the app's ports ------------------------------------------------


def port_reference_errors(
    health_checks: Sequence[HealthCheck],
    readiness_checks: Sequence[ReadinessCheck],
    port_names: Sequence[str | None],
    health_where: str = "healthChecks",
    readiness_where: str = "readinessChecks",
) -> list[FieldError]:
    """Checks that refer to ports the app does not define (one name or None per port
    definition, in order): a `portIndex` past the app's ports, a `portName` no port has."""
    errors = []
    for index, check in enumerate(health_checks):
        if check.port_index is not None and check.port_index >= len(port_names):
            errors.append(
                FieldError(
                    f"{health_where}/{index}/portIndex",
                    "Health check port indices must address an element of the ports array "
                    "or container port mappings.",
                )
            )
    names = {name for name in port_names if name}
    for index, readiness in enumerate(readiness_checks):
        if readiness.port_name not in names:
            errors.append(
                FieldError(
                    f"{readiness_where}/{index}/portName",
                    f"no port definition is named {readiness.port_name!r}",
                )
            )
    return errors


# ---- the agent's view: TaskSpec keeps these as JSON dicts ---------------------------------------


def health_checks_of(entries: Iterable[Mapping[str, Any]]) -> tuple[HealthCheck, ...]:
    """The checks of a TaskSpec (already validated at the API edge, so errors raise)."""
    return parse_health_checks(list(entries))


def readiness_checks_of(entries: Iterable[Mapping[str, Any]]) -> tuple[ReadinessCheck, ...]:
    return parse_readiness_checks(list(entries))


def fetch_of(entries: Iterable[Mapping[str, Any]]) -> tuple[FetchUri, ...]:
    return parse_fetch(list(entries))


def apply_reported_health(task: Task, reported: Mapping[str, Any]) -> Task:
    """The task with the `healthy`/`ready` an agent's registration reports for it (None
    reports nothing); the same task object when nothing changes or the task has ended."""
    if task.state.terminal:
        return task
    healthy, ready = reported.get("healthy"), reported.get("ready")
    changes: dict[str, bool] = {}
    if isinstance(healthy, bool) and healthy != task.healthy:
        changes["healthy"] = healthy
    if isinstance(ready, bool) and ready != task.ready:
        changes["ready"] = ready
    return task.with_changes(**changes) if changes else task
