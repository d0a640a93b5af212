"""Jobs as Metronome defines them: the job spec, its schedules, its runs and its history.

Frozen value types with their store JSON (snake_case); the Metronome JSON of the API lives
at the API edge. Times are wall-clock seconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from tessera.model.container import BRIDGE, DOCKER, HOST, MESOS, ContainerSpec
from tessera.model.secret_refs import SecretUse, task_uses

# Metronome's defaults (JobRunSpec, ScheduleSpec).
DEFAULT_CPUS = 1.0
DEFAULT_MEM = 128.0
DEFAULT_MAX_LAUNCH_DELAY = 3600
DEFAULT_STARTING_DEADLINE = 900
DEFAULT_TIMEZONE = "UTC"


class RestartPolicy(StrEnum):
    NEVER = "NEVER"
    ON_FAILURE = "ON_FAILURE"


class ConcurrencyPolicy(StrEnum):
    """ALLOW and FORBID are Metronome's; REPLACE (stop the active run, start the new one)
    is Tessera's addition."""

    ALLOW = "ALLOW"
    FORBID = "FORBID"
    REPLACE = "REPLACE"


class RunStatus(StrEnum):
    INITIAL = "INITIAL"  # recorded, its task not yet submitted
    STARTING = "STARTING"  # task submitted, not running yet (queued or staging)
    ACTIVE = "ACTIVE"  # a task of the run has been running
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCESS, RunStatus.FAILED)


class Trigger(StrEnum):
    API = "api"
    SCHEDULE = "schedule"
    DEPENDENCY = "dependency"


@dataclass(frozen=True, slots=True)
class JobConstraint:
    """Metronome's `{attribute, operator, value}`; operator IS, EQ, LIKE or UNLIKE."""

    attribute: str
    operator: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Artifact:
    uri: str
    extract: bool = True
    executable: bool = False
    cache: bool = False


@dataclass(frozen=True, slots=True)
class JobRunSpec:
    """What every run of a job launches: one task with these resources."""

    cmd: str | None = None
    args: tuple[str, ...] | None = None
    cpus: float = DEFAULT_CPUS
    mem: float = DEFAULT_MEM
    disk: float = 0.0
    gpus: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    constraints: tuple[JobConstraint, ...] = ()
    user: str | None = None
    task_kill_grace_seconds: float | None = None
    max_launch_delay: int = DEFAULT_MAX_LAUNCH_DELAY
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    active_deadline_seconds: int | None = None
    # Metronome's run.docker {image, forcePullImage, privileged, parameters}, run.ucr
    # {image {id, kind, forcePull}, privileged} and run.networks [{mode, labels}], as
    # validated at the API and shown back; `container()` is what the task runs.
    docker: Mapping[str, Any] | None = None
    role: str = "*"
    priority: int = 0
    ucr: Mapping[str, Any] | None = None
    networks: tuple[Mapping[str, Any], ...] = ()
    # References only (model/secret_refs.py): name -> source path as given, and
    # environment variable -> secret name. Values never enter a spec.
    secrets: Mapping[str, str] = field(default_factory=dict)
    env_secrets: Mapping[str, str] = field(default_factory=dict)

    def env_json(self) -> dict[str, Any]:
        """Metronome's `run.env`: plain values and `{"secret": name}` references."""
        return {**self.env, **{k: {"secret": v} for k, v in self.env_secrets.items()}}

    def secrets_json(self) -> dict[str, Any]:
        return {name: {"source": source} for name, source in self.secrets.items()}

    def secret_uses(self) -> tuple[SecretUse, ...]:
        """For the run's TaskSpec: which secret goes into which variable."""
        return task_uses(self.secrets, self.env_secrets, ())

    def container(self) -> ContainerSpec | None:
        """The image the run's task runs in (DOCKER for run.docker, MESOS for run.ucr)."""
        bridged = any(n.get("mode") == "container/bridge" for n in self.networks)
        network = BRIDGE if bridged else HOST
        if self.docker is not None:
            return ContainerSpec(
                type=DOCKER,
                image=str(self.docker["image"]),
                force_pull=bool(self.docker.get("forcePullImage", False)),
                privileged=bool(self.docker.get("privileged", False)),
                parameters=tuple(
                    (str(p["key"]), str(p["value"])) for p in self.docker.get("parameters", ())
                ),
                network=network,
            )
        if self.ucr is not None:
            image = self.ucr["image"]
            return ContainerSpec(
                type=MESOS,
                image=str(image["id"]),
                force_pull=bool(image.get("forcePull", False)),
                privileged=bool(self.ucr.get("privileged", False)),
                network=network,
            )
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["args"] = list(self.args) if self.args is not None else None
        data["env"] = dict(self.env)
        data["docker"] = dict(self.docker) if self.docker is not None else None
        data["ucr"] = dict(self.ucr) if self.ucr is not None else None
        data["networks"] = [dict(n) for n in self.networks]
        data["secrets"] = dict(self.secrets)
        data["env_secrets"] = dict(self.env_secrets)
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobRunSpec:
        values = dict(data)
        values["args"] = tuple(values["args"]) if values.get("args") is not None else None
        values["env"] = dict(values.get("env", {}))
        values["artifacts"] = tuple(Artifact(**a) for a in values.get("artifacts", ()))
        values["constraints"] = tuple(JobConstraint(**c) for c in values.get("constraints", ()))
        values["restart_policy"] = RestartPolicy(values.get("restart_policy", "NEVER"))
        values["networks"] = tuple(dict(n) for n in values.get("networks", ()))
        values["secrets"] = dict(values.get("secrets", {}))
        values["env_secrets"] = dict(values.get("env_secrets", {}))
        return JobRunSpec(**values)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    id: str
    cron: str
    timezone: str = DEFAULT_TIMEZONE
    starting_deadline_seconds: int = DEFAULT_STARTING_DEADLINE
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ScheduleSpec:
        values = dict(data)
        values["concurrency_policy"] = ConcurrencyPolicy(values.get("concurrency_policy", "ALLOW"))
        return ScheduleSpec(**values)


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    run: JobRunSpec
    description: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    dependencies: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "labels": dict(self.labels),
            "dependencies": list(self.dependencies),
            "run": self.run.to_json(),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobSpec:
        return JobSpec(
            id=data["id"],
            run=JobRunSpec.from_json(data["run"]),
            description=data.get("description"),
            labels=dict(data.get("labels", {})),
            dependencies=tuple(data.get("dependencies", ())),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored: its spec, its schedules (Metronome keeps them with the job), and
    when it was created (the starting point of its schedules and dependency triggers)."""

    spec: JobSpec
    schedules: tuple[ScheduleSpec, ...] = ()
    created_at: float = 0.0

    @property
    def id(self) -> str:
        return self.spec.id

    def schedule(self, schedule_id: str) -> ScheduleSpec | None:
        return next((s for s in self.schedules if s.id == schedule_id), None)

    def with_changes(self, **changes: Any) -> Job:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "schedules": [s.to_json() for s in self.schedules],
            "created_at": self.created_at,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Job:
        return Job(
            spec=JobSpec.from_json(data["spec"]),
            schedules=tuple(ScheduleSpec.from_json(s) for s in data.get("schedules", ())),
            created_at=data.get("created_at", 0.0),
        )


@dataclass(frozen=True, slots=True)
class RunTask:
    """One task a run launched, as last seen (Metronome's JobRunTask)."""

    id: str
    status: str
    started_at: float | None = None
    completed_at: float | None = None
    exit_code: int | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class JobRun:
    """One run of a job. Its task ID is chosen and recorded before the task is submitted,
    so a master that stops in between submits that same task again, never a second one."""

    id: str
    job_id: str
    spec: JobRunSpec
    status: RunStatus
    created_at: float
    trigger: Trigger = Trigger.API
    schedule_id: str | None = None
    scheduled_at: float | None = None
    completed_at: float | None = None
    tasks: tuple[RunTask, ...] = ()
    # The task the run waits on; None between a failed attempt and its retry.
    current_task: str | None = None
    attempt_started_at: float | None = None
    next_attempt_at: float | None = None
    stop_requested: bool = False
    message: str | None = None

    @property
    def key(self) -> str:
        return run_key(self.job_id, self.id)

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(task.id for task in self.tasks)

    def with_changes(self, **changes: Any) -> JobRun:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "spec": self.spec.to_json(),
            "status": self.status.value,
            "created_at": self.created_at,
            "trigger": self.trigger.value,
            "schedule_id": self.schedule_id,
            "scheduled_at": self.scheduled_at,
            "completed_at": self.completed_at,
            "tasks": [asdict(task) for task in self.tasks],
            "current_task": self.current_task,
            "attempt_started_at": self.attempt_started_at,
            "next_attempt_at": self.next_attempt_at,
            "stop_requested": self.stop_requested,
            "message": self.message,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobRun:
        return JobRun(
            id=data["id"],
            job_id=data["job_id"],
            spec=JobRunSpec.from_json(data["spec"]),
            status=RunStatus(data["status"]),
            created_at=data["created_at"],
            trigger=Trigger(data.get("trigger", "api")),
            schedule_id=data.get("schedule_id"),
            scheduled_at=data.get("scheduled_at"),
            completed_at=data.get("completed_at"),
            tasks=tuple(RunTask(**task) for task in data.get("tasks", ())),
            current_task=data.get("current_task"),
            attempt_started_at=data.get("attempt_started_at"),
            next_attempt_at=data.get("next_attempt_at"),
            stop_requested=data.get("stop_requested", False),
            message=data.get("message"),
        )


def run_key(job_id: str, run_id: str) -> str:
    """The store key of a run: job IDs hold dots but never a slash."""
    return f"{job_id}/{run_id}"


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A finished run as history keeps it (Metronome's JobRunInfo, with its task IDs)."""

    id: str
    created_at: float
    finished_at: float
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MissedRun:
    """A scheduled time that passed without a run: the master was down past the starting
    deadline, or the concurrency policy forbade a second run."""

    schedule_id: str
    scheduled_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class JobHistory:
    success_count: int = 0
    failure_count: int = 0
    last_success_at: float | None = None
    last_failure_at: float | None = None
    # Newest first, each list kept to the history limit.
    successful_runs: tuple[FinishedRun, ...] = ()
    failed_runs: tuple[FinishedRun, ...] = ()
    missed_count: int = 0
    missed_runs: tuple[MissedRun, ...] = ()

    def with_changes(self, **changes: Any) -> JobHistory:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobHistory:
        values = dict(data)
        for name in ("successful_runs", "failed_runs"):
            values[name] = tuple(
                FinishedRun(r["id"], r["created_at"], r["finished_at"], tuple(r["tasks"]))
                for r in values.get(name, ())
            )
        values["missed_runs"] = tuple(MissedRun(**m) for m in values.get("missed_runs", ()))
        return JobHistory(**values)


@dataclass(frozen=True, slots=True)
class JobMarks:
    """What a job's triggers have already handled, written in the same commit as the run
    they start, so that no scheduled time and no dependency success starts two runs.

    `schedules`: schedule ID -> the latest scheduled time handled (started or missed).
    `dependencies`: the latest parent success that triggered a run.
    """

    schedules: Mapping[str, float] = field(default_factory=dict)
    dependencies: float | None = None

    def with_schedule(self, schedule_id: str, fired_at: float) -> JobMarks:
        return replace(self, schedules={**self.schedules, schedule_id: fired_at})

    def with_changes(self, **changes: Any) -> JobMarks:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"schedules": dict(self.schedules), "dependencies": self.dependencies}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobMarks:
        return JobMarks(dict(data.get("schedules", {})), data.get("dependencies"))
