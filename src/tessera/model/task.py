"""Task states (Mesos names), the one-off task spec, and the task record the master keeps."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from tessera.model.container import ContainerSpec
from tessera.model.secret_refs import SecretUse


class TaskState(StrEnum):
    """Mesos task states, plus `TASK_QUEUED` for a task the master has not placed yet.

    A queued task has been accepted and stored but not sent to any agent; it is what
    Marathon shows in `/v2/queue` rather than as a task.
    """

    TASK_QUEUED = "TASK_QUEUED"
    TASK_STAGING = "TASK_STAGING"
    TASK_STARTING = "TASK_STARTING"
    TASK_RUNNING = "TASK_RUNNING"
    TASK_KILLING = "TASK_KILLING"
    TASK_FINISHED = "TASK_FINISHED"
    TASK_FAILED = "TASK_FAILED"
    TASK_KILLED = "TASK_KILLED"
    TASK_ERROR = "TASK_ERROR"
    TASK_LOST = "TASK_LOST"
    TASK_UNREACHABLE = "TASK_UNREACHABLE"
    TASK_GONE = "TASK_GONE"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Holds resources on an agent (placed and not known to have ended)."""
        return self in ACTIVE_STATES


TERMINAL_STATES = frozenset(
    {
        TaskState.TASK_FINISHED,
        TaskState.TASK_FAILED,
        TaskState.TASK_KILLED,
        TaskState.TASK_ERROR,
        TaskState.TASK_LOST,
        TaskState.TASK_GONE,
    }
)
ACTIVE_STATES = frozenset(
    {
        TaskState.TASK_STAGING,
        TaskState.TASK_STARTING,
        TaskState.TASK_RUNNING,
        TaskState.TASK_KILLING,
        TaskState.TASK_UNREACHABLE,
    }
)


@dataclass(frozen=True, slots=True)
class PortDefinition:
    """A host port the task asks for: 0 means any free port from the agent's ranges."""

    port: int = 0
    name: str | None = None
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What to run and with which resources; the same for every launch of it."""

    name: str
    cmd: str | None = None
    args: tuple[str, ...] | None = None
    cpus: float = 0.1
    mem: float = 32.0
    disk: float = 0.0
    gpus: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    port_definitions: tuple[PortDefinition, ...] = ()
    require_ports: bool = False
    constraints: tuple[tuple[str, ...], ...] = ()
    user: str | None = None
    kill_grace_seconds: float = 3.0
    cpu_hard_limit: bool = False
    app_id: str | None = None
    app_version: str | None = None
    # The group a one-off task (native /v1/tasks) belongs to, for permissions; apps' and
    # jobs' tasks are owned by their app or job instead.
    group: str | None = None
    role: str = "*"
    priority: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    # Marathon's JSON, checked at the API edge and interpreted by the agent that runs the
    # task: healthChecks, readinessChecks and fetch entries (uri, extract, executable, cache).
    health_checks: tuple[Mapping[str, Any], ...] = ()
    readiness_checks: tuple[Mapping[str, Any], ...] = ()
    fetch: tuple[Mapping[str, Any], ...] = ()
    # The image to run it in, with its network, port mappings and volumes; None runs the
    # command on the host. For a bridged container the task's host ports are one per port
    # mapping, in the same order.
    container: ContainerSpec | None = None
    # Which secrets the task needs and where (references only: the master resolves the
    # values at launch and sends them with the launch message, never in the spec).
    secrets: tuple[SecretUse, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["secrets"] = [use.to_json() for use in self.secrets]
        data["env"] = dict(self.env)
        data["labels"] = dict(self.labels)
        for name in ("health_checks", "readiness_checks", "fetch"):
            data[name] = [dict(entry) for entry in getattr(self, name)]
        data["container"] = self.container.to_json() if self.container is not None else None
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> TaskSpec:
        values = dict(data)
        values["args"] = tuple(values["args"]) if values.get("args") is not None else None
        values["port_definitions"] = tuple(
            PortDefinition(**p) for p in values.get("port_definitions", ())
        )
        values["constraints"] = tuple(tuple(c) for c in values.get("constraints", ()))
        values["env"] = dict(values.get("env", {}))
        values["labels"] = dict(values.get("labels", {}))
        for name in ("health_checks", "readiness_checks", "fetch"):
            values[name] = tuple(dict(entry) for entry in values.get(name, ()))
        container = values.get("container")
        values["container"] = ContainerSpec.from_json(container) if container else None
        values["secrets"] = tuple(SecretUse.from_json(s) for s in values.get("secrets", ()))
        return TaskSpec(**values)


_ID_CHARS = re.compile(r"[^a-z0-9_\-]")


def new_task_id(path: str) -> str:
    """Marathon-style task ID: `/shop/web` -> `shop_web.<uuid>`."""
    stem = "_".join(part for part in path.strip("/").split("/") if part) or "task"
    stem = _ID_CHARS.sub("-", stem.lower())
    return f"{stem}.{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class Task:
    """The master's record of one task: its spec, where it runs and what became of it."""

    id: str
    spec: TaskSpec
    state: TaskState
    created_at: float
    updated_at: float
    agent_id: str | None = None
    hostname: str | None = None
    ports: tuple[int, ...] = ()
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # Why the task is still queued: reason name -> number of agents that rejected it.
    queued_reasons: Mapping[str, int] = field(default_factory=dict)
    # The agent's verdict from the task's health checks; None while it has none or
    # none has passed yet (Marathon's `healthCheckResults` come from this).
    healthy: bool | None = None
    # Readiness checks passed (gates deployments only).
    ready: bool | None = None
    # UUIDs of the status updates already applied, so a resent update is acknowledged
    # again but never applied twice.
    applied_updates: tuple[str, ...] = ()
    # When the services controller gave the task up: unreachable past its app's
    # inactiveAfterSeconds, so a replacement counts in its place (Marathon's
    # UnreachableInactive). Kept if the task comes back, so the surplus copy is this one.
    inactive_since: float | None = None
    # The container's own addresses on its bridge (from the agent's TASK_RUNNING update).
    ip_addresses: tuple[str, ...] = ()
    # A replacement started by a drain or rebalance: the task it replaces, and the agent
    # chosen for it (placed elsewhere when it no longer fits there).
    moved_from: str | None = None
    target_agent: str | None = None

    def with_changes(self, **changes: Any) -> Task:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.to_json(),
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "ports": list(self.ports),
            "reason": self.reason,
            "message": self.message,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "queued_reasons": dict(self.queued_reasons),
            "healthy": self.healthy,
            "ready": self.ready,
            "applied_updates": list(self.applied_updates),
            "inactive_since": self.inactive_since,
            "ip_addresses": list(self.ip_addresses),
            "moved_from": self.moved_from,
            "target_agent": self.target_agent,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Task:
        return Task(
            id=data["id"],
            spec=TaskSpec.from_json(data["spec"]),
            state=TaskState(data["state"]),
            created_at=data["created_at"],
            updated_at=data["updated_at"],
            agent_id=data.get("agent_id"),
            hostname=data.get("hostname"),
            ports=tuple(data.get("ports", ())),
            reason=data.get("reason"),
            message=data.get("message"),
            exit_code=data.get("exit_code"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            queued_reasons=dict(data.get("queued_reasons", {})),
            healthy=data.get("healthy"),
            ready=data.get("ready"),
            applied_updates=tuple(data.get("applied_updates", ())),
            inactive_since=data.get("inactive_since"),
            ip_addresses=tuple(data.get("ip_addresses", ())),
            moved_from=data.get("moved_from"),
            target_agent=data.get("target_agent"),
        )


def ip_addresses(task: Task) -> list[dict[str, str]]:
    """Marathon's `ipAddresses` of a task: its container's own addresses when it has them
    (bridged), else its agent's address when the host is an IP literal."""
    found = list(task.ip_addresses)
    if not found and task.hostname:
        found = [task.hostname]
    shown = []
    for address in found:
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            continue  # a host name, not an address
        shown.append({"ipAddress": address, "protocol": f"IPv{version}"})
    return shown
