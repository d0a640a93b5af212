"""`tessera simulate`: plan a workload onto a described cluster, offline, for capacity planning."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from rich.markup import escape
from rich.table import Table

from tessera.cli.client import fail
from tessera.cli.render import out
from tessera.model.constraints import (
    Constraint,
    ConstraintError,
    parse_constraint,
    parse_constraints,
)
from tessera.model.resources import PortRange, Resources
from tessera.placement import (
    RESOURCE_NAMES,
    AgentDescription,
    Plan,
    Policy,
    Request,
    Snapshot,
    Strategy,
    place,
)

_APP_SEGMENT = re.compile(r"^[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*$")
BAD_INPUT = 2


class ClusterResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(0.0, ge=0)
    mem: float = Field(0.0, ge=0)
    disk: float = Field(0.0, ge=0)
    gpus: int = Field(0, ge=0)
    ports: list[tuple[int, int]] = Field(default_factory=list)

    @field_validator("ports")
    @classmethod
    def _ranges(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        ranges = [PortRange(begin, end) for begin, end in sorted(value)]
        for before, after in itertools.pairwise(ranges):
            if after.begin <= before.end:
                raise ValueError(
                    f"port ranges {before.begin}-{before.end} and {after.begin}-{after.end} overlap"
                )
        return [(r.begin, r.end) for r in ranges]

    def to_resources(self) -> Resources:
        ranges = tuple(PortRange(begin, end) for begin, end in self.ports)
        return Resources(self.cpus, self.mem, self.disk, self.gpus, ranges)


class ClusterAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    hostname: str | None = Field(None, min_length=1)
    resources: ClusterResources
    attributes: dict[str, str | int | float] = Field(default_factory=dict)
    role: str = Field("*", min_length=1)
    count: int = Field(1, ge=1)


class ClusterFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agents: list[ClusterAgent]


class PortDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    port: int = Field(0, ge=0, le=65535)


def _valid_constraint(raw: list[Any]) -> list[Any]:
    parse_constraint(raw)
    return raw


MarathonConstraint = Annotated[list[Any], AfterValidator(_valid_constraint)]


class App(BaseModel):
    """The Marathon app fields placement uses; other Marathon fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    id: str
    instances: int = Field(1, ge=0)
    cpus: float = Field(1.0, ge=0.001)
    mem: float = Field(128.0, ge=0)
    disk: float = Field(0.0, ge=0)
    gpus: int = Field(0, ge=0)
    constraints: list[MarathonConstraint] = Field(default_factory=list)
    portDefinitions: list[PortDefinition] | None = None  # Marathon's field names
    ports: list[int] | None = None
    requirePorts: bool = False
    role: str = Field("*", min_length=1)
    priority: int = 0

    @field_validator("id")
    @classmethod
    def _app_path(cls, value: str) -> str:
        path = "/" + value.strip("/")
        if path == "/" or not all(_APP_SEGMENT.match(part) for part in path[1:].split("/")):
            raise ValueError(
                "must be a path of lowercase letters, digits, '-' and '.', like /shop/web"
            )
        return path

    def parsed_constraints(self) -> tuple[Constraint, ...]:
        return parse_constraints(self.constraints)

    def host_ports(self) -> tuple[int, ...]:
        if self.portDefinitions is not None:
            return tuple(definition.port for definition in self.portDefinitions)
        return tuple(self.ports or ())


class WorkloadFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apps: list[App]


_Model = TypeVar("_Model", bound=BaseModel)


def _where(location: Sequence[int | str]) -> str:
    return "/".join(str(part) for part in location) or "(top level)"


def _load(path: Path, model: type[_Model]) -> _Model:
    """Read and validate one file, or stop with one line naming the file and the field."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        fail(escape(f"{path}: cannot read: {error.strerror or error}"), BAD_INPUT)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(escape(f"{path}: not valid JSON: {error}"), BAD_INPUT)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        fail(escape(f"{path}: {_where(first['loc'])}: {message.strip()}"), BAD_INPUT)


def _stamp(agent: ClusterAgent) -> list[AgentDescription]:
    """`count` copies, with `-0`, `-1`, … appended to id and hostname when count > 1."""
    resources = agent.resources.to_resources()
    attributes = {name: str(value) for name, value in agent.attributes.items()}
    hostname = agent.hostname or agent.id
    suffixes = [f"-{k}" for k in range(agent.count)] if agent.count > 1 else [""]
    return [
        AgentDescription(agent.id + s, hostname + s, resources, attributes, role=agent.role)
        for s in suffixes
    ]


def build_cluster(cluster: ClusterFile, path: Path) -> Snapshot:
    described: list[AgentDescription] = []
    seen: set[str] = set()
    for index, agent in enumerate(cluster.agents):
        stamped = _stamp(agent)
        for description in stamped:
            if description.id in seen:
                fail(
                    escape(f"{path}: agents/{index}/id: duplicate agent id {description.id}"),
                    BAD_INPUT,
                )
            seen.add(description.id)
        described.extend(stamped)
    return Snapshot.build(described)


def build_requests(workload: WorkloadFile, path: Path) -> list[Request]:
    requests: list[Request] = []
    seen: set[str] = set()
    for index, app in enumerate(workload.apps):
        if app.id in seen:
            fail(escape(f"{path}: apps/{index}/id: duplicate app id {app.id}"), BAD_INPUT)
        seen.add(app.id)
        try:
            requests.append(
                Request(
                    app.id,
                    app.instances,
                    Resources(app.cpus, app.mem, app.disk, app.gpus),
                    ports=app.host_ports(),
                    require_ports=app.requirePorts,
                    constraints=app.parsed_constraints(),
                    role=app.role,
                    priority=app.priority,
                )
            )
        except (ValueError, ConstraintError) as error:
            fail(escape(f"{path}: apps/{index}: {error}"), BAD_INPUT)
    return requests


def summarise(snapshot: Snapshot, plan: Plan, seconds: float) -> dict[str, Any]:
    total = snapshot.total.sum(axis=0)
    used = total - snapshot.free.sum(axis=0)
    utilization = {
        name: round(float(used[i] / total[i]), 4) if total[i] > 0 else 0.0
        for i, name in enumerate(RESOURCE_NAMES)
    }
    return {
        "placed": plan.placed_count,
        "unplaced": plan.unplaced_count,
        "agents_used": len({p.agent_id for p in plan.placements}),
        "utilization": utilization,
        "seconds": round(seconds, 6),
    }


def _print_tables(summary: dict[str, Any], plan: Plan, n_agents: int) -> None:
    table = Table("placed", "unplaced", "agents used", "cpus", "mem", "disk", "gpus", "seconds")
    used = summary["utilization"]
    table.add_row(
        str(summary["placed"]),
        str(summary["unplaced"]),
        f"{summary['agents_used']}/{n_agents}",
        *(f"{used[name]:.1%}" for name in RESOURCE_NAMES),
        f"{summary['seconds']:.3f}",
    )
    out.print(table)
    if plan.unplaced:
        why = Table("app", "unplaced", "why (agents rejecting, by reason)")
        for item in plan.unplaced:
            reasons = ", ".join(f"{name}: {count}" for name, count in sorted(item.reasons.items()))
            why.add_row(escape(item.key), str(item.count), reasons or "no agents")
        out.print(why)


def simulate(
    cluster: Annotated[Path, typer.Option("--cluster", help="Cluster file (agents).")],
    workload: Annotated[Path, typer.Option("--workload", help="Workload file (Marathon apps).")],
    policy: Annotated[
        Strategy, typer.Option("--policy", help="Packing policy.")
    ] = Strategy.BINPACK,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the plan as JSON here.")
    ] = None,
    spread_replicas: Annotated[
        bool,
        typer.Option(
            "--spread-replicas/--no-spread-replicas",
            help="Instances of one app prefer distinct agents and zones (where it costs "
            "at most 1% more agents).",
        ),
    ] = True,
) -> None:
    """Place a workload on a cluster offline and show what fits, where, and why not."""
    snapshot = build_cluster(_load(cluster, ClusterFile), cluster)
    requests = build_requests(_load(workload, WorkloadFile), workload)
    started = time.perf_counter()
    plan = place(snapshot, requests, Policy(strategy=policy, spread_replicas=spread_replicas))
    seconds = time.perf_counter() - started
    summary = summarise(snapshot, plan, seconds)
    if output is not None:
        result = plan.to_json()
        document = {
            "placements": result["placements"],
            "unplaced": result["unplaced"],
            "summary": summary,
        }
        try:
            output.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as error:
            fail(escape(f"{output}: cannot write: {error.strerror or error}"), BAD_INPUT)
    _print_tables(summary, plan, snapshot.n_agents)
