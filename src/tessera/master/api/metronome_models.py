"""Metronome v1 JSON in: job and schedule definitions, validated with Metronome's rules and
defaults, unknown fields rejected, errors as 422 with Metronome's field paths."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tessera.http_errors import ApiError, invalid, validation_details
from tessera.model.constraints import ConstraintError, parse_constraints
from tessera.model.container import image_reference_error
from tessera.model.container_input import ParameterIn
from tessera.model.health import HealthSpecError, parse_fetch
from tessera.model.job import (
    DEFAULT_CPUS,
    DEFAULT_MAX_LAUNCH_DELAY,
    DEFAULT_MEM,
    DEFAULT_STARTING_DEADLINE,
    Artifact,
    ConcurrencyPolicy,
    Job,
    JobConstraint,
    JobRunSpec,
    JobSpec,
    RestartPolicy,
    ScheduleSpec,
)
from tessera.model.secret_refs import owner_path_of_job, read_secrets, reference_error
from tessera.reconcile.cron import CronError, parse_cron, parse_timezone

# Dot-separated names of lowercase letters, digits and inner dashes (Metronome's JobId).
JOB_ID = r"^([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])(\.([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9]))*$"
SCHEDULE_ID = r"^([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$"
# Task IDs are `<job id>_<run id>.<uuid>` and must stay within 200 characters.
JOB_ID_MAX = 120
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = r"^[a-z_][a-z0-9_\-]*\$?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConstraintIn(_Strict):
    attribute: str = Field(min_length=1)
    operator: Literal["IS", "EQ", "LIKE", "UNLIKE"]
    value: str | None = None


class ArtifactIn(_Strict):
    uri: str = Field(min_length=1)
    extract: bool = True
    executable: bool = False
    cache: bool = False


class PlacementIn(_Strict):
    constraints: list[ConstraintIn] = Field(default_factory=list)


class RestartIn(_Strict):
    policy: Literal["NEVER", "ON_FAILURE"] = "NEVER"
    activeDeadlineSeconds: int | None = Field(None, ge=1)


class _StrictTypes(_Strict):
    # No coercion ("yes" is not true): what an image runs with must be what was meant.
    model_config = ConfigDict(extra="forbid", strict=True)


def _image(image: str) -> str:
    problem = image_reference_error(image)
    if problem:
        raise ValueError(problem)
    return image


class DockerIn(_StrictTypes):
    image: str = Field(min_length=1)
    forcePullImage: bool = False
    privileged: bool = False
    parameters: list[ParameterIn] = Field(default_factory=list)  # Marathon's allow-list

    _reference = field_validator("image")(_image)


class UcrImageIn(_StrictTypes):
    id: str = Field(min_length=1)
    kind: Literal["docker"] = "docker"
    forcePull: bool = False

    _reference = field_validator("id")(_image)


class UcrIn(_StrictTypes):
    image: UcrImageIn
    privileged: bool = False


class NetworkIn(_StrictTypes):
    mode: Literal["host", "container/bridge"]
    labels: dict[str, str] = Field(default_factory=dict)


class SecretIn(_Strict):
    source: str = Field(min_length=1)


class EnvSecretIn(_Strict):
    secret: str = Field(min_length=1)


class RunIn(_Strict):
    cmd: str | None = Field(None, min_length=1)
    args: list[str] | None = Field(None, min_length=1)
    cpus: float = Field(DEFAULT_CPUS, ge=0.01)
    mem: float = Field(DEFAULT_MEM, ge=32)
    disk: float = Field(0.0, ge=0)
    gpus: int = Field(0, ge=0)
    # A value or a reference to one of `secrets` ({"secret": "secret0"}), checked in
    # `_check_secrets` where the job's id (its secret space) is known.
    env: dict[str, str | EnvSecretIn] = Field(default_factory=dict)
    artifacts: list[ArtifactIn] = Field(default_factory=list)
    placement: PlacementIn | None = None
    user: str | None = Field(None, pattern=_USER, max_length=32)
    taskKillGracePeriodSeconds: float | None = Field(None, ge=0, le=3600)
    maxLaunchDelay: int = Field(DEFAULT_MAX_LAUNCH_DELAY, ge=1)
    restart: RestartIn | None = None
    docker: DockerIn | None = None
    ucr: UcrIn | None = None
    networks: list[NetworkIn] = Field(default_factory=list, max_length=1)
    # Metronome fields Tessera cannot honour: accepted only empty, as clients send them.
    volumes: list[Any] = Field(default_factory=list, max_length=0)
    secrets: dict[str, SecretIn] = Field(default_factory=dict)
    # Tessera's additions.
    role: str = Field("*", pattern=r"^(\*|[a-zA-Z0-9_][a-zA-Z0-9_\-.]*)$", max_length=64)
    priority: int = Field(0, ge=0, le=1000)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str | EnvSecretIn]) -> dict[str, str | EnvSecretIn]:
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid variable name {name!r}")
        return env

    @model_validator(mode="after")
    def _one_command(self) -> RunIn:
        image = self.docker is not None or self.ucr is not None
        if (self.cmd is not None and self.args is not None) or (
            self.cmd is None and self.args is None and not image
        ):
            raise ValueError("exactly one of cmd and args must be given, or a docker or ucr image")
        if self.docker is not None and self.ucr is not None:
            raise ValueError("Either Docker or UCR should be provided, but not both")
        if not image and any(n.mode != "host" for n in self.networks):
            raise ValueError("Only containers may join container or bridge networks")
        return self

    def to_spec(self) -> JobRunSpec:
        restart = self.restart or RestartIn()
        constraints = self.placement.constraints if self.placement else []
        return JobRunSpec(
            cmd=self.cmd,
            args=tuple(self.args) if self.args is not None else None,
            cpus=self.cpus,
            mem=self.mem,
            disk=self.disk,
            gpus=self.gpus,
            env={k: v for k, v in self.env.items() if isinstance(v, str)},
            env_secrets={k: v.secret for k, v in self.env.items() if isinstance(v, EnvSecretIn)},
            secrets={name: entry.source for name, entry in self.secrets.items()},
            artifacts=tuple(
                Artifact(a.uri, a.extract, a.executable, a.cache) for a in self.artifacts
            ),
            constraints=tuple(JobConstraint(c.attribute, c.operator, c.value) for c in constraints),
            user=self.user,
            task_kill_grace_seconds=self.taskKillGracePeriodSeconds,
            max_launch_delay=self.maxLaunchDelay,
            restart_policy=RestartPolicy(restart.policy),
            active_deadline_seconds=restart.activeDeadlineSeconds,
            docker=self.docker.model_dump() if self.docker else None,
            ucr=self.ucr.model_dump() if self.ucr else None,
            networks=tuple(
                n.model_dump(exclude_defaults=True) | {"mode": n.mode} for n in self.networks
            ),
            role=self.role,
            priority=self.priority,
        )


class ScheduleIn(_Strict):
    id: str = Field(pattern=SCHEDULE_ID, max_length=63)
    cron: str
    timezone: str = "UTC"
    startingDeadlineSeconds: int = Field(DEFAULT_STARTING_DEADLINE, ge=1)
    concurrencyPolicy: Literal["ALLOW", "FORBID", "REPLACE"] = "ALLOW"
    enabled: bool = True
    # Shown in responses; clients that send a schedule back unchanged include it.
    nextRunAt: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        try:
            parse_cron(cron)
        except CronError as error:
            raise ValueError(str(error)) from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, timezone: str) -> str:
        try:
            parse_timezone(timezone)
        except CronError as error:
            raise ValueError(str(error)) from None
        return timezone

    def to_spec(self) -> ScheduleSpec:
        return ScheduleSpec(
            id=self.id,
            cron=self.cron,
            timezone=self.timezone,
            starting_deadline_seconds=self.startingDeadlineSeconds,
            concurrency_policy=ConcurrencyPolicy(self.concurrencyPolicy),
            enabled=self.enabled,
        )


class DependencyIn(_Strict):
    id: str = Field(pattern=JOB_ID, max_length=JOB_ID_MAX)


class JobIn(_Strict):
    id: str = Field(pattern=JOB_ID, max_length=JOB_ID_MAX)
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    run: RunIn
    dependencies: list[DependencyIn] = Field(default_factory=list)
    # Accepted when a job is created (POST); PUT keeps the job's schedules, as Metronome.
    schedules: list[ScheduleIn] = Field(default_factory=list)

    @field_validator("schedules")
    @classmethod
    def _unique_schedules(cls, schedules: list[ScheduleIn]) -> list[ScheduleIn]:
        ids = [s.id for s in schedules]
        if len(ids) != len(set(ids)):
            raise ValueError("schedule ids must be unique")
        return schedules

    def to_job(self) -> Job:
        spec = JobSpec(
            id=self.id,
            run=self.run.to_spec(),
            description=self.description,
            labels=dict(self.labels),
            dependencies=tuple(dict.fromkeys(d.id for d in self.dependencies)),
        )
        return Job(spec=spec, schedules=tuple(s.to_spec() for s in self.schedules))


# ---- parsing with Metronome's error shape ---------------------------------------------------


def metronome_path(location: Sequence[Any]) -> str:
    """Play's JsPath: `/run/placement/constraints(0)/operator`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"({part})"
        else:
            path += f"/{part}"
    return path or "/"


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_body(raw: bytes, model: type[ModelT], overrides: dict[str, Any] | None = None) -> ModelT:
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid("/", f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise invalid("/", "expected a JSON object")
    data.update(overrides or {})
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        raise ApiError(422, "Object is not valid", details=_details(error)) from None
    _check_deeper(parsed)
    return parsed


def _details(error: ValidationError) -> list[dict[str, Any]]:
    by_path: dict[str, list[str]] = {}
    for item in error.errors():
        location = item.get("loc", ())
        # Pydantic names the branch of a union (`str`, `int`) in the location: not a field.
        location = tuple(p for p in location if p not in ("str", "int", "float", "bool"))
        wording = validation_details([item])[0]["errors"]
        by_path.setdefault(metronome_path(location), []).extend(wording)
    return [{"path": path, "errors": errors} for path, errors in by_path.items()]


def _check_deeper(parsed: BaseModel) -> None:
    """Checks shared with the rest of Tessera: placement constraints, fetch URIs, secrets."""
    run = getattr(parsed, "run", None)
    if not isinstance(run, RunIn):
        return
    _check_secrets(run, getattr(parsed, "id", None))
    constraints = run.placement.constraints if run.placement else []
    for index, constraint in enumerate(constraints):
        operator = "IS" if constraint.operator == "EQ" else constraint.operator
        raw = [constraint.attribute, operator, *([constraint.value] if constraint.value else [])]
        try:
            parse_constraints([raw])
        except ConstraintError as error:
            message = str(error).split(": ", 1)[-1]
            raise invalid(f"/run/placement/constraints({index})", message) from None
    try:
        parse_fetch([a.model_dump() for a in run.artifacts], "run/artifacts")
    except HealthSpecError as error:
        detail = error.marathon_details()[0]
        path = re.sub(r"/(\d+)", r"(\1)", "/" + str(detail["path"]).lstrip("/"))
        raise invalid(path, "; ".join(detail["errors"])) from None


def _check_secrets(run: RunIn, job_id: object) -> None:
    """Sources in the job's space (model/secret_refs.py), env references to declared names."""

    def fail(path: str, message: str) -> None:
        raise invalid(re.sub(r"/(\d+)", r"(\1)", path), message)

    if run.secrets:
        if not isinstance(job_id, str):
            fail("/run/secrets", "secrets need the job's id")
        raw = {name: entry.model_dump() for name, entry in run.secrets.items()}
        read_secrets(raw, owner_path_of_job(str(job_id)), "/run/secrets", fail)
    names = {name: entry.source for name, entry in run.secrets.items()}
    for variable, value in run.env.items():
        if isinstance(value, EnvSecretIn):
            problem = reference_error(value.secret, names)
            if problem:
                fail(f"/run/env/{variable}", problem)
