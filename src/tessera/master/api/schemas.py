"""Request-body schemas of the master's write operations, published in `/openapi.json`.

The Marathon, Metronome and group routes read raw `Request` bodies so that their answers
keep Marathon's 422 shape and field paths; FastAPI therefore cannot see what they accept.
The pydantic models below describe those bodies for clients and fuzzers only: the
handlers keep their own validation (`model/app.py`, `model/group.py`, Metronome's
`metronome_models.py` and the secrets API, whose models are reused as they are; routes
that take pydantic bodies, such as IAM, quotas and native tasks, are published by FastAPI).

Each model mirrors what its reader accepts, no more and no less where it can: a field the
reader treats as absent when it is `null` is nullable here, a field the reader never looks
at is left unconstrained, and objects whose reader ignores unknown keys (health checks,
fetch entries) allow them. So data that breaks the schema is data the master refuses,
which is what schemathesis' `negative_data_rejection` checks. Rules that span fields (one
of `cmd`, `args` or a container image; a readiness check's timeout below its interval)
are in the descriptions, not in the schema.

`publish_request_schemas(app)` wraps `app.openapi` so that every operation (each alias
prefix too) gets its `requestBody`, the `token` security scheme unless its route is public,
and the error answers it can give (400, 401, 403, 404, 409, 413, 422, 503).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from copy import deepcopy
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import models_json_schema

from tessera.master.api.metronome_models import JobIn, ScheduleIn
from tessera.master.api.secrets_v1 import SecretIn, SecretPatch
from tessera.model.app import MAX_CPUS, MAX_GPUS, MAX_INSTANCES, MAX_MIB
from tessera.model.container_input import ContainerIn, NetworkIn
from tessera.model.permissions import (
    PLANNED_ROUTES,
    ROUTES,
    UnknownRoute,
    route_rule,
    unaliased,
)

_INT32_MAX = 2**31 - 1
_YEAR = 365 * 86400
# Every character an accepted Marathon path can hold (segments of [a-z0-9.-], `/`, `.`,
# `..`): a superset of valid ids, so that an id this refuses is one the master refuses.
_PATH_CHARS = r"^[a-z0-9./\-]*$"
_ID = r"^[a-z0-9./\-]*[a-z0-9][a-z0-9./\-]*$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SECRET_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
_NOT_BLANK = r"\S"


class _Closed(BaseModel):
    """An object whose reader refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """An object whose reader ignores fields it does not know."""

    model_config = ConfigDict(extra="allow")


def _json(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema(schema)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
Labels = Annotated[dict[str, str] | None, _json(_nullable(_STRING_MAP))]
# Read only (what GET returns, so a GET can be PUT back), or ignored: any value is accepted.
Ignored = Annotated[Any, _json({"description": "accepted and ignored"})]

# ---- Marathon apps ---------------------------------------------------------------------------


class HealthCheckCommand(_Open):
    value: str = Field(pattern=_NOT_BLANK)


class HealthCheck(_Open):
    """Marathon's health check. COMMAND checks need `command`; a check with a `command`
    and no protocol is a COMMAND check; give `port` or `portIndex`, not both."""

    protocol: (
        Literal["HTTP", "HTTPS", "TCP", "COMMAND", "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP"] | None
    ) = None
    command: HealthCheckCommand | None = None
    path: str | None = Field(None, min_length=1, max_length=1024)
    portIndex: int | None = Field(None, ge=0, le=65535)
    port: int | None = Field(None, ge=0, le=65535)
    gracePeriodSeconds: int | None = Field(None, ge=0, le=_INT32_MAX)
    intervalSeconds: int | None = Field(None, ge=0, le=_INT32_MAX)
    timeoutSeconds: int | None = Field(None, ge=0, le=_INT32_MAX)
    maxConsecutiveFailures: int | None = Field(None, ge=0, le=_INT32_MAX)
    delaySeconds: int | None = Field(None, ge=0, le=_INT32_MAX)
    ignoreHttp1xx: bool | None = None
    ipProtocol: Literal["IPv4", "IPv6"] | None = None


class ReadinessCheck(_Open):
    """Marathon's readiness check; `timeoutSeconds` must be below `intervalSeconds`, and
    `portName` must name one of the app's ports."""

    name: str | None = Field(None, min_length=1, max_length=256)
    protocol: Literal["HTTP", "HTTPS"] | None = None
    path: str | None = Field(None, min_length=1, max_length=1024)
    portName: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[a-z][-a-z0-9]*$")
    intervalSeconds: int | None = Field(None, ge=2, le=_INT32_MAX)
    timeoutSeconds: int | None = Field(None, ge=1, le=_INT32_MAX)
    httpStatusCodesForReady: list[Annotated[int, Field(ge=100, le=999)]] | None = Field(
        None, min_length=1
    )
    preserveLastResponse: bool | None = None


class FetchUri(_Open):
    """A file fetched into the sandbox: http(s)://, file:// or an absolute path."""

    uri: str | None = Field(max_length=1024)
    extract: bool | None = None
    executable: bool | None = None
    cache: bool | None = None
    destPath: str | None = Field(None, min_length=1, max_length=1024)


class PortDefinition(_Closed):
    port: int | None = Field(None, ge=0, le=65535, description="0: any free port")
    name: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9][a-z0-9\-]*$")
    protocol: Literal["tcp", "udp", "udp,tcp", "tcp,udp", ""] | None = None
    labels: Labels = None


class UpgradeStrategy(_Closed):
    minimumHealthCapacity: float | None = Field(None, ge=0, le=1)
    maximumOverCapacity: float | None = Field(None, ge=0, le=1)
    progressDeadlineSeconds: float | None = Field(None, ge=1, le=7 * 86400)


class UnreachableStrategy(_Closed):
    inactiveAfterSeconds: float | None = Field(None, ge=0, le=_YEAR)
    expungeAfterSeconds: float | None = Field(None, ge=0, le=_YEAR)


class SecretSource(_Closed):
    source: str = Field(pattern=r"[^/]", description="a secret path in the app's space")


_CONSTRAINT = {
    "type": "array",
    "description": "[field, operator] or [field, operator, value]",
    "minItems": 2,
    "maxItems": 3,
    "prefixItems": [
        {"type": "string", "pattern": r"^(@hostname|@zone|@region|[A-Za-z0-9_.\-]+)$"},
        {"enum": ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS"]},
        {"type": ["string", "number", "null"]},
    ],
}
_ENV = {
    "type": "object",
    "propertyNames": {"pattern": _ENV_NAME},
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"secret": {"type": "string", "minLength": 1}},
                "required": ["secret"],
                "additionalProperties": False,
            },
        ]
    },
}
_SECRETS = {
    "type": "object",
    "propertyNames": {"pattern": _SECRET_NAME},
    "additionalProperties": {"$ref": "#/components/schemas/SecretSource"},
}


class MarathonAppUpdate(_Closed):
    """The fields of a Marathon app a partial update (PUT or PATCH) may change; the id
    comes from the URL. `{"version": "<version>"}` alone rolls back to that version."""

    id: Ignored = None
    cmd: str | None = Field(None, pattern=_NOT_BLANK)
    args: list[str] | None = None
    user: str | None = Field(None, max_length=32, pattern=r"^[A-Za-z_][A-Za-z0-9_\-.]*\$?$")
    env: Annotated[dict[str, Any] | None, _json(_nullable(_ENV))] = None
    secrets: Annotated[dict[str, Any] | None, _json(_nullable(_SECRETS))] = None
    instances: int | None = Field(None, ge=0, le=MAX_INSTANCES)
    cpus: float | None = Field(None, ge=0.001, le=MAX_CPUS)
    mem: float | None = Field(None, ge=0, le=MAX_MIB)
    disk: float | None = Field(None, ge=0, le=MAX_MIB)
    gpus: int | None = Field(None, ge=0, le=MAX_GPUS)
    constraints: Annotated[
        list[list[Any]] | None, _json(_nullable({"type": "array", "items": _CONSTRAINT}))
    ] = None
    fetch: list[FetchUri] | None = None
    # Deprecated forms, read only when their successor (fetch, portDefinitions) is absent.
    uris: Ignored = Field(None, description="deprecated: URIs to fetch, when fetch is absent")
    ports: Ignored = Field(None, description="deprecated: port numbers, when no portDefinitions")
    portDefinitions: list[PortDefinition] | None = Field(
        None, description="host networking only; port names and fixed ports unique"
    )
    requirePorts: bool | None = None
    backoffSeconds: float | None = Field(None, ge=0, le=86400)
    backoffFactor: float | None = Field(None, ge=1, le=1000)
    maxLaunchDelaySeconds: float | None = Field(None, ge=0, le=86400)
    container: ContainerIn | None = None
    networks: list[NetworkIn] | None = None
    healthChecks: list[HealthCheck] | None = None
    readinessChecks: list[ReadinessCheck] | None = Field(None, max_length=1)
    dependencies: list[Annotated[str, Field(pattern=_PATH_CHARS)]] | None = None
    upgradeStrategy: UpgradeStrategy | None = None
    labels: Labels = None
    acceptedResourceRoles: list[str] | None = None
    taskKillGracePeriodSeconds: float | None = Field(None, ge=0, le=3600)
    unreachableStrategy: Annotated[
        UnreachableStrategy | Literal["disabled"] | None,
        _json(
            {
                "anyOf": [
                    {"$ref": "#/components/schemas/UnreachableStrategy"},
                    {"const": "disabled"},
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    killSelection: Literal["YOUNGEST_FIRST", "OLDEST_FIRST"] | None = None
    role: str | None = Field(None, pattern=r"^[^\s/\\]+$")
    priority: int | None = Field(None, ge=-1000, le=1000, description="Tessera's own")
    resourceLimits: Ignored = None
    version: Ignored = None
    versionInfo: Ignored = None
    tasksStaged: Ignored = None
    tasksRunning: Ignored = None
    tasksHealthy: Ignored = None
    tasksUnhealthy: Ignored = None
    deployments: Ignored = None
    tasks: Ignored = None
    lastTaskFailure: Ignored = None
    readinessCheckResults: Ignored = None
    taskStats: Ignored = None
    executor: Ignored = None
    storeUrls: Ignored = None
    ipAddress: Ignored = None
    residency: Ignored = None
    tty: Ignored = None
    check: Ignored = None
    executorResources: Ignored = None


class MarathonApp(MarathonAppUpdate):
    """A Marathon app (Marathon 1.x defaults). It runs exactly one of `cmd` and `args`,
    and/or a container image."""

    id: str = Field(pattern=_ID, description="absolute (/shop/web) or relative to its group")


class MarathonAppUpdateWithId(MarathonAppUpdate):
    """One app of a bulk update: a new app, or the fields to change of an existing one."""

    id: str = Field(pattern=_ID)


class MarathonSubGroup(_Closed):
    """A group inside a group: its id is relative to (a direct child of) its parent."""

    id: str = Field(pattern=_ID)
    apps: list[MarathonApp] | None = None
    groups: list[MarathonSubGroup] | None = None
    dependencies: list[Annotated[str, Field(pattern=r"^[a-z0-9./\-]+$")]] | None = None
    version: Ignored = None
    pods: Ignored = Field(None, description="not supported: must be empty")
    enforceRole: bool | None = Field(None, description="true only on a top-level group")
    scaleBy: Ignored = None


class MarathonGroup(MarathonSubGroup):
    """A Marathon group tree; its id defaults to the URL's group."""

    id: str | None = Field(None, pattern=_PATH_CHARS)  # type: ignore[assignment]


class MarathonGroupReplacement(MarathonGroup):
    """A group's new content (its id comes from the URL); apps left out are stopped."""

    id: Ignored = None
    # With scaleBy the body is a MarathonGroupScale, whatever else it holds.
    scaleBy: Annotated[Any, _json({"not": {}, "description": "see MarathonGroupScale"})] = None


class MarathonGroupScale(_Open):
    """Scale every app of the group by a factor (other fields are ignored)."""

    scaleBy: float = Field(ge=0, le=1000)


class MarathonGroupRollback(_Closed):
    """Every app of the group back as it was at `version`."""

    version: str
    id: Ignored = None


class TaskKill(_Open):
    ids: list[str]


# ---- the table of bodies ---------------------------------------------------------------------

_MODELS: tuple[type[BaseModel], ...] = (
    MarathonApp,
    MarathonAppUpdate,
    MarathonAppUpdateWithId,
    MarathonGroup,
    MarathonGroupReplacement,
    MarathonGroupScale,
    MarathonGroupRollback,
    SecretSource,
    UnreachableStrategy,
    TaskKill,
    JobIn,
    ScheduleIn,
    SecretIn,
    SecretPatch,
)


def openapi_path(template: str) -> str:
    """A route template as OpenAPI spells it: `{app_id:path}` is `{app_id}` there."""
    return re.sub(r":\w+}", "}", template)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_APP_LIST = {"type": "array", "minItems": 1, "items": _ref("MarathonAppUpdateWithId")}
_GROUP_UPDATE = {
    "anyOf": [
        _ref("MarathonGroupScale"),
        _ref("MarathonGroupRollback"),
        _ref("MarathonGroupReplacement"),
    ]
}

# (method, route template without alias prefix) -> the body's schema.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v2/apps"): _ref("MarathonApp"),
    ("PUT", "/v2/apps"): _APP_LIST,
    ("PATCH", "/v2/apps"): _APP_LIST,
    ("PUT", "/v2/apps/{app_id:path}"): _ref("MarathonAppUpdate"),
    ("PATCH", "/v2/apps/{app_id:path}"): _ref("MarathonAppUpdate"),
    ("POST", "/v2/groups"): _ref("MarathonGroup"),
    ("POST", "/v2/groups/{group_id:path}"): _ref("MarathonGroup"),
    ("PUT", "/v2/groups"): _GROUP_UPDATE,
    ("PUT", "/v2/groups/{group_id:path}"): _GROUP_UPDATE,
    ("POST", "/v2/tasks/delete"): _ref("TaskKill"),
    ("POST", "/v1/jobs"): _ref("JobIn"),
    ("PUT", "/v1/jobs/{job_id}"): _ref("JobUpdate"),
    ("POST", "/v1/jobs/{job_id}/schedules"): _ref("ScheduleIn"),
    ("PUT", "/v1/jobs/{job_id}/schedules/{schedule_id}"): _ref("ScheduleIn"),
    ("PUT", "/secrets/v1/secret/default/{path:path}"): _ref("SecretIn"),
    ("PATCH", "/secrets/v1/secret/default/{path:path}"): _ref("SecretPatch"),
}

_BODIES = {(method, openapi_path(template)): body for (method, template), body in BODIES.items()}

# Write operations that take no body: the URL says everything.
BODILESS: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v2/apps/{app_id:path}/restart"),
        ("POST", "/v1/jobs/{job_id}/runs"),
        ("POST", "/v1/jobs/{job_id}/runs/{run_id}/actions/stop"),
        ("POST", "/acs/api/v1/auth/logout"),
        ("PUT", "/acs/api/v1/groups/{gid}/users/{uid}"),
        ("PUT", "/acs/api/v1/acls/{rid}/users/{uid}/{action}"),
        ("PUT", "/acs/api/v1/acls/{rid}/groups/{gid}/{action}"),
        ("POST", "/v1/tasks/{task_id}/sandbox-grant"),
        ("POST", "/v1/agents/{agent_id}/reactivate"),
        ("POST", "/v1/agents/{agent_id}/revoke"),
    }
)


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every schema the bodies refer to, by name (OpenAPI's `components.schemas`)."""
    _, top = models_json_schema(
        [(model, "validation") for model in _MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, dict[str, Any]] = top.get("$defs", {})
    # PUT /v1/jobs/{id}: the id comes from the URL and the job keeps its schedules.
    update = deepcopy(schemas["JobIn"])
    update["title"] = "JobUpdate"
    update["required"] = [name for name in update.get("required", []) if name != "id"]
    update["properties"]["id"] = {"description": "ignored: the id is the URL's"}
    update["properties"]["schedules"] = {"description": "ignored: PUT keeps the schedules"}
    schemas["JobUpdate"] = update
    return schemas


# ---- publishing ------------------------------------------------------------------------------

SECURITY_SCHEME = "token"
_ERROR = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "description": "Marathon's error shape",
}
_INVALID = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REASONS = {"201": "Created", "401": "Invalid credentials", "429": "Too many failed logins"}
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", *_WRITES})


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _public(method: str, template: str) -> bool:
    try:
        return route_rule(method, template).public
    except UnknownRoute:
        return False  # the auth dependency refuses it: it is not public either


def _templates() -> dict[str, str]:
    """Route templates of the permission tables by their OpenAPI spelling."""
    return {openapi_path(template): template for _, template in (*ROUTES, *PLANNED_ROUTES)}


def _document(operation: dict[str, Any], method: str, template: str) -> None:
    body = _BODIES.get((method, openapi_path(template)))
    if body is not None and "requestBody" not in operation:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if not _public(method, template):
        operation["security"] = [{SECURITY_SCHEME: []}]
        responses.setdefault("401", _answer("No valid credentials", _ERROR))
        responses.setdefault("403", _answer("Not permitted", _ERROR))
    responses.setdefault("400", _answer("Malformed: a body that is not JSON, a bad query", _ERROR))
    if "{" in template or method in _WRITES:
        # Writes also name objects in their bodies (task ids, dependencies, versions).
        responses.setdefault("404", _answer("Not found", _ERROR))
    if method in _WRITES:
        responses.setdefault("409", _answer("Conflicts with the current state", _ERROR))
    if "requestBody" in operation:
        responses.setdefault("413", _answer("Body too large", _ERROR))
    # Every invalid input, FastAPI's own included, answers in Marathon's shape.
    responses["422"] = _answer("Invalid input: every bad field with its path", _INVALID)
    responses.setdefault("503", _answer("Store unavailable or leadership lost: retry", _ERROR))
    for code in _ALSO_BY_PATH.get((method, openapi_path(template)), ()):
        responses.setdefault(code, _answer(_REASONS[code], _ERROR if code != "201" else {}))


# Codes a route answers besides the one it declares: PUT creates what does not exist; a
# login refuses (public routes get no 401 otherwise) and is rate limited.
_ALSO: dict[tuple[str, str], tuple[str, ...]] = {
    ("PUT", "/v2/apps/{app_id:path}"): ("201",),
    ("PUT", "/v2/groups/{group_id:path}"): ("201",),
    ("PUT", "/v2/groups"): ("201",),
    ("POST", "/acs/api/v1/auth/login"): ("401", "429"),
}
_ALSO_BY_PATH = {
    (method, openapi_path(template)): codes for (method, template), codes in _ALSO.items()
}


def publish(schema: dict[str, Any]) -> dict[str, Any]:
    """Add bodies, security and error answers to the master's OpenAPI document (in place)."""
    components = schema.setdefault("components", {})
    found = components.setdefault("schemas", {})
    for name, definition in component_schemas().items():
        if name in found and found[name] != definition:
            raise ValueError(f"two different schemas are named {name!r}")
        found[name] = definition
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "token=<jwt> or Bearer <jwt>",
    }
    templates = _templates()
    for path, operations in schema.get("paths", {}).items():
        bare = unaliased(path)
        template = templates.get(bare, bare)
        for method, operation in operations.items():
            if method.upper() in _METHODS:
                _document(operation, method.upper(), template)
    return schema


def publish_request_schemas(app: FastAPI) -> None:
    """Make `app.openapi()` publish every body schema, security and error answer."""
    build: Callable[[], dict[str, Any]] = app.openapi
    published: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not published:
            app.openapi_schema = publish(build())
            published.append(app.openapi_schema)
        return published[0]

    # FastAPI documents replacing `app.openapi` as the way to customise the schema.
    app.openapi = openapi  # type: ignore[method-assign]
