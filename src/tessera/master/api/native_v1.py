"""Tessera's native API under /v1: agents, one-off tasks and the cluster summary."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tessera.http_errors import ApiError
from tessera.master.auth import can_read_task
from tessera.master.controllers.drain import DrainController
from tessera.master.core import Master
from tessera.model.agent import Agent, AgentState
from tessera.model.container import ContainerSpec
from tessera.model.container_input import read_container
from tessera.model.group import group_role
from tessera.model.health import (
    FieldError,
    HealthSpecError,
    parse_fetch,
    parse_health_checks,
    parse_readiness_checks,
    port_reference_errors,
)
from tessera.model.permissions import PathRefused, service_path
from tessera.model.task import PortDefinition, Task, TaskSpec, TaskState, new_task_id

router = APIRouter(prefix="/v1")

_NAME = r"^[a-z0-9]([a-z0-9_\-.]*[a-z0-9])?$"


class PortDefinitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = Field(0, ge=0, le=65535)
    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9\-]*$", max_length=63)
    protocol: Literal["tcp", "udp", "udp,tcp"] = "tcp"


class TaskLaunch(BaseModel):
    """A one-off task. Resource fields and defaults follow Marathon's app definition."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("task", pattern=_NAME, max_length=128)
    # The Marathon group the task belongs to, for permissions (`/team-a`); the root needs
    # permissions on every group.
    group: str = Field("/", max_length=512)
    cmd: str | None = Field(None, min_length=1)
    args: list[str] | None = Field(None, min_length=1)
    cpus: float = Field(0.1, ge=0.001)
    mem: float = Field(32.0, ge=1)
    disk: float = Field(0.0, ge=0)
    gpus: int = Field(0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    portDefinitions: list[PortDefinitionIn] = Field(default_factory=list, max_length=64)
    requirePorts: bool = False
    user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_\-]*\$?$", max_length=32)
    killGracePeriodSeconds: float = Field(3.0, ge=0, le=3600)
    cpuHardLimit: bool = False
    # Marathon's JSON, checked (and given Marathon's defaults) by tessera.model.health.
    healthChecks: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    readinessChecks: list[dict[str, Any]] = Field(default_factory=list)
    fetch: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    # Marathon's `container` and `networks`, checked by tessera.model.container_input; with
    # an image, cmd and args are optional. Port mappings replace portDefinitions.
    container: dict[str, Any] | None = None
    networks: list[dict[str, Any]] | None = None

    @field_validator("group")
    @classmethod
    def _group_path(cls, value: str) -> str:
        try:
            return service_path(value)
        except PathRefused as refused:
            raise ValueError(refused.reason) from None

    @model_validator(mode="after")
    def _one_command(self) -> TaskLaunch:
        both = self.cmd is not None and self.args is not None
        if both or (self.cmd is None and self.args is None and self.container is None):
            raise ValueError("exactly one of cmd and args must be given, or a container image")
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env: invalid variable name {key!r}")
        fixed = [p.port for p in self.portDefinitions if p.port]
        if len(fixed) != len(set(fixed)):
            raise ValueError("portDefinitions: the same port is asked for twice")
        health = parse_health_checks(self.healthChecks, "healthChecks")
        readiness = parse_readiness_checks(self.readinessChecks, "readinessChecks")
        names = [p.name for p in self.portDefinitions]
        if errors := port_reference_errors(health, readiness, names):
            raise HealthSpecError(errors)
        self.healthChecks = [check.to_json() for check in health]
        self.readinessChecks = [check.to_json() for check in readiness]
        self.fetch = [entry.to_json() for entry in parse_fetch(self.fetch, "fetch")]
        return self

    def read_container(self) -> ContainerSpec | None:
        """The container, or an ApiError (422) naming every bad field."""
        if self.container is None and self.networks is None:
            return None
        reading = read_container(self.container, self.networks)
        problems = list(reading.errors)
        spec = reading.container
        no_command = self.cmd is None and self.args is None
        if not problems and no_command and (spec is None or not spec.image):
            problems.append(FieldError("/container/docker/image", "is required"))
        if not problems and spec is not None and spec.bridged and self.portDefinitions:
            problems.append(FieldError("/portDefinitions", "are only allowed with host-networking"))
        if problems:
            raise ApiError(
                422,
                "Object is not valid",
                details=[{"path": p.path, "errors": [p.message]} for p in problems],
            )
        return spec if spec is not None and spec.image else None

    def to_spec(self, container: ContainerSpec | None = None) -> TaskSpec:
        ports = tuple(PortDefinition(p.port, p.name, p.protocol) for p in self.portDefinitions)
        require_ports = self.requirePorts
        if container is not None and container.bridged:
            ports = tuple(
                PortDefinition(m.host_port, m.name, m.protocol) for m in container.port_mappings
            )
            require_ports = True
        return TaskSpec(
            name=self.name,
            cmd=self.cmd,
            args=tuple(self.args) if self.args is not None else None,
            cpus=self.cpus,
            mem=self.mem,
            disk=self.disk,
            gpus=self.gpus,
            env=dict(self.env),
            port_definitions=ports,
            require_ports=require_ports,
            user=self.user,
            kill_grace_seconds=self.killGracePeriodSeconds,
            cpu_hard_limit=self.cpuHardLimit,
            health_checks=tuple(self.healthChecks),
            readiness_checks=tuple(self.readinessChecks),
            fetch=tuple(self.fetch),
            container=container,
            group=service_path(self.group),
        )


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_view(task: Task, agent: Agent | None) -> dict[str, Any]:
    spec = task.spec
    return {
        "id": task.id,
        "name": spec.name,
        "state": task.state.value,
        "agentId": task.agent_id,
        "host": task.hostname,
        "agentUrl": agent.http_url if agent else None,
        "ports": list(task.ports),
        "ipAddresses": list(task.ip_addresses),
        "image": spec.container.image if spec.container is not None else None,
        "cmd": spec.cmd,
        "args": list(spec.args) if spec.args is not None else None,
        "cpus": spec.cpus,
        "mem": spec.mem,
        "disk": spec.disk,
        "gpus": spec.gpus,
        "env": dict(spec.env),
        "portDefinitions": [
            {"port": p.port, "name": p.name, "protocol": p.protocol} for p in spec.port_definitions
        ],
        "user": spec.user,
        "createdAt": iso(task.created_at),
        "startedAt": iso(task.started_at),
        "finishedAt": iso(task.finished_at),
        "updatedAt": iso(task.updated_at),
        "exitCode": task.exit_code,
        "reason": task.reason,
        "message": task.message,
        "queuedReasons": dict(task.queued_reasons),
        "healthy": task.healthy,
        "ready": task.ready,
        "appId": spec.app_id,
        "version": spec.app_version,
    }


def agent_view(
    agent: Agent, master: Master, drains: DrainController | None = None
) -> dict[str, Any]:
    allocated = master.allocated(agent.id)
    view = {
        "id": agent.id,
        "hostname": agent.hostname,
        "state": agent.state.value,
        "url": agent.http_url,
        "resources": agent.resources.to_json(),
        "allocated": allocated,
        "attributes": dict(agent.attributes),
        "registeredAt": iso(agent.registered_at),
        "lastSeenAt": iso(agent.last_seen_at),
        "isolation": dict(agent.isolation),
        "containers": dict(agent.containers) if agent.containers is not None else None,
        "version": agent.version,
        "tasks": len(master.state.active_tasks_on(agent.id)),
    }
    if drains is not None and agent.drain is not None:
        view["drain"] = drain_view(drains, agent)
    return view


def drain_view(controller: DrainController, agent: Agent) -> dict[str, Any] | None:
    """An agent's `drain`: since when, until when, by whom, what is left on it and why."""
    drain = agent.drain
    if drain is None:
        return None
    blocked = controller.blocked(agent)
    return {
        "startedAt": iso(drain.started_at),
        "deadline": iso(drain.deadline),
        "rebalance": drain.rebalance,
        "user": drain.user,
        "remaining": len(blocked),
        "blocked": [b.to_json() for b in blocked],
    }


def _drains(request: Request) -> DrainController | None:
    controller = getattr(request.app.state, "drains", None)
    return controller if isinstance(controller, DrainController) else None


def _master(request: Request) -> Master:
    master: Master = request.app.state.master
    return master


@router.get("/leader")
async def leader(request: Request) -> dict[str, Any]:
    """Who leads, answered by every master (a follower from what it last saw in etcd)."""
    master = _master(request)
    found = master.leader()
    if found is None:
        raise ApiError(404, "no master leads at the moment; retry shortly")
    return {
        "leader": found.address,
        "url": found.url,
        "id": found.id,
        "self": found.is_self,
        "term": found.term,
        "ha": master.leadership is not None,
    }


@router.get("/agents")
async def list_agents(request: Request) -> dict[str, Any]:
    master = _master(request)
    agents = sorted(master.state.agents.values(), key=lambda a: a.id)
    return {"agents": [agent_view(agent, master, _drains(request)) for agent in agents]}


def known_agent(master: Master, agent_id: str) -> Agent:
    """The agent, or 404."""
    agent = master.state.agents.get(agent_id)
    if agent is None:
        raise ApiError(404, f"Agent '{agent_id}' does not exist")
    return agent


@router.get("/agents/{agent_id}")
async def show_agent(agent_id: str, request: Request) -> dict[str, Any]:
    master = _master(request)
    return agent_view(known_agent(master, agent_id), master, _drains(request))


@router.post("/tasks", status_code=201)
async def launch_task(body: TaskLaunch, request: Request) -> dict[str, Any]:
    master = _master(request)
    spec = body.to_spec(body.read_container())
    # A one-off task in a team's group runs under the team's role (and quota).
    groups = request.app.state.services.state.groups
    spec = dataclasses.replace(spec, role=group_role(spec.group or "/", groups))
    task = await master.submit(new_task_id(body.name), spec)
    return task_view(task, None)


@router.get("/tasks")
async def list_tasks(
    request: Request,
    state: Annotated[list[TaskState] | None, Query()] = None,
    agent_id: Annotated[str | None, Query(alias="agentId")] = None,
) -> dict[str, Any]:
    master = _master(request)
    wanted = {s.value for s in state or ()}
    tasks = [
        task
        for task in master.state.tasks.values()
        if (not wanted or task.state.value in wanted)
        and (agent_id is None or task.agent_id == agent_id)
        and can_read_task(request, task.id)
    ]
    tasks.sort(key=lambda task: task.created_at)
    agents = master.state.agents
    return {"tasks": [task_view(task, agents.get(task.agent_id or "")) for task in tasks]}


@router.get("/tasks/{task_id}")
async def show_task(task_id: str, request: Request) -> dict[str, Any]:
    master = _master(request)
    task = master.state.tasks.get(task_id)
    if task is None:
        raise ApiError(404, f"Task '{task_id}' does not exist")
    return task_view(task, master.state.agents.get(task.agent_id or ""))


@router.delete("/tasks/{task_id}", status_code=202)
async def kill_task(task_id: str, request: Request) -> dict[str, Any]:
    master = _master(request)
    if task_id not in master.state.tasks:
        raise ApiError(404, f"Task '{task_id}' does not exist")
    task = await master.kill(task_id)
    return task_view(task, master.state.agents.get(task.agent_id or ""))


@router.get("/cluster/summary")
async def cluster_summary(request: Request) -> dict[str, Any]:
    master = _master(request)
    capacity = {"cpus": 0.0, "mem": 0.0, "disk": 0.0, "gpus": 0.0}
    allocated = dict.fromkeys(capacity, 0.0)
    agents_by_state: dict[str, int] = {}
    for agent in master.state.agents.values():
        agents_by_state[agent.state.value] = agents_by_state.get(agent.state.value, 0) + 1
        if agent.state is not AgentState.ACTIVE:
            continue
        for name, value in agent.resources.scalars().items():
            capacity[name] += value
        for name, value in master.allocated(agent.id).items():
            allocated[name] += value
    tasks_by_state: dict[str, int] = {}
    for task in master.state.tasks.values():
        tasks_by_state[task.state.value] = tasks_by_state.get(task.state.value, 0) + 1
    return {
        "capacity": _rounded(capacity),
        "allocated": _rounded(allocated),
        "free": _rounded({name: capacity[name] - allocated[name] for name in capacity}),
        "agents": agents_by_state,
        "tasks": tasks_by_state,
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in values.items()}
