"""`tessera simulate`: plan a workload onto a described cluster, offline, for capacity planning."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Sequence
from dataclasses import replace
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
    Placement,
    Plan,
    Policy,
    Request,
    RunningTask,
    Snapshot,
    Strategy,
    place,
)
from tessera.placement.rebalance import MoveRules, RebalancePlan, plan_rebalance

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


class CurrentPlacement(BaseModel):
    model_config = ConfigDict(extra="ignore")
    app: str = Field(min_length=1)
    instance: int = Field(ge=0)
    agent: str = Field(min_length=1)
    ports: list[int] = Field(default_factory=list)


class CurrentPlan(BaseModel):
    """A plan in the `--output` format: only its placements are read."""

    model_config = ConfigDict(extra="ignore")
    placements: list[CurrentPlacement]


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


def _task_id(app: str, instance: int) -> str:
    return f"{app}#{instance}"


def _instance(task_id: str) -> tuple[str, int]:
    app, _, instance = task_id.rpartition("#")
    return app, int(instance)


def load_current(
    path: Path, snapshot: Snapshot, requests: list[Request]
) -> tuple[list[Placement], list[Request]]:
    """Record what runs now (placements of apps and instances still in the workload) as
    running tasks; returns them and the requests for the instances not placed yet."""
    current = _load(path, CurrentPlan)
    by_app = {request.key: request for request in requests}
    running: dict[str, set[int]] = {key: set() for key in by_app}
    kept: list[Placement] = []
    for index, item in enumerate(current.placements):
        if item.agent not in snapshot.index:
            fail(escape(f"{path}: placements/{index}/agent: unknown agent {item.agent}"), BAD_INPUT)
        request = by_app.get(item.app)
        if request is None or item.instance >= request.count:
            continue  # the app or the instance is gone from the workload
        if item.instance in running[item.app]:
            fail(
                escape(f"{path}: placements/{index}/instance: {item.app} {item.instance} twice"),
                BAD_INPUT,
            )
        running[item.app].add(item.instance)
        task = RunningTask(
            _task_id(item.app, item.instance),
            item.app,
            request.resources,
            tuple(item.ports),
            request.role,
            request.priority,
        )
        snapshot.add_task(snapshot.index[item.agent], task)
        kept.append(Placement(item.app, item.instance, item.agent, tuple(item.ports)))
    missing = [
        replace(request, count=request.count - len(running[request.key]))
        for request in requests
        if request.count > len(running[request.key])
    ]
    return kept, missing


def _numbered(plan: Plan, requests: list[Request], taken: dict[str, set[int]]) -> Plan:
    """Give new placements the instance numbers their app has free (lowest first)."""
    free = {
        r.key: iter(i for i in itertools.count() if i not in taken.get(r.key, set()))
        for r in requests
    }
    placements = tuple(replace(p, instance=next(free[p.key])) for p in plan.placements)
    return replace(plan, placements=placements)


def rebalance(
    snapshot: Snapshot, requests: list[Request], placements: list[Placement], max_moves: int | None
) -> tuple[list[Placement], RebalancePlan]:
    """Plan a rebalance of what runs (Marathon's default upgradeStrategy for every app) and
    return the placements after it."""
    counts: dict[str, int] = {}
    for placement in placements:
        counts[placement.key] = counts.get(placement.key, 0) + 1
    rules = {
        request.key: MoveRules(request, counts[request.key])
        for request in requests
        if request.key in counts
    }
    plan = plan_rebalance(snapshot, rules, max_moves=max_moves)
    where = {(p.key, p.instance): p for p in placements}
    live = {t.task_id: i for i, t in enumerate(snapshot.tasks.tasks) if snapshot.tasks.alive[i]}
    by_key = {request.key: request for request in requests}
    for wave in plan.waves:
        for move in wave:
            app, instance = _instance(move.task_id)
            request = by_key[app]
            task = snapshot.evict(live[move.task_id])
            row = snapshot.index[move.target]
            drawn = iter(snapshot.ports.take(row, request.fixed_ports, request.dynamic_ports))
            ports = tuple(
                port if request.require_ports and port else next(drawn) for port in request.ports
            )
            snapshot.add_task(row, replace(task, ports=ports))
            where[app, instance] = Placement(app, instance, move.target, ports)
    return list(where.values()), plan


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
    current: Annotated[
        Path | None,
        typer.Option("--current", help="What runs now: a plan in the --output format."),
    ] = None,
    do_rebalance: Annotated[
        bool,
        typer.Option("--rebalance", help="Then plan moves that free whole agents."),
    ] = False,
    max_moves: Annotated[
        int | None, typer.Option("--max-moves", help="At most this many moves (--rebalance).")
    ] = None,
) -> None:
    """Place a workload on a cluster offline and show what fits, where, and why not."""
    if max_moves is not None and max_moves < 0:
        fail("--max-moves: must be >= 0", BAD_INPUT)
    if max_moves is not None and not do_rebalance:
        fail("--max-moves: only with --rebalance", BAD_INPUT)
    snapshot = build_cluster(_load(cluster, ClusterFile), cluster)
    requests = build_requests(_load(workload, WorkloadFile), workload)
    running: list[Placement] = []
    to_place = requests
    if current is not None:
        running, to_place = load_current(current, snapshot, requests)
    started = time.perf_counter()
    plan = place(snapshot, to_place, Policy(strategy=policy, spread_replicas=spread_replicas))
    seconds = time.perf_counter() - started
    if current is not None:
        taken: dict[str, set[int]] = {}
        for placement in running:
            taken.setdefault(placement.key, set()).add(placement.instance)
        plan = _numbered(plan, to_place, taken)
    placements = [*running, *plan.placements]
    moved: RebalancePlan | None = None
    if do_rebalance:
        _record(snapshot, plan, to_place)
        placements, moved = rebalance(snapshot, requests, placements, max_moves)
    order = {request.key: k for k, request in enumerate(requests)}
    placements.sort(key=lambda p: (order[p.key], p.instance))
    plan = replace(plan, placements=tuple(placements))
    summary = summarise(snapshot, plan, seconds)
    document = {**{k: v for k, v in plan.to_json().items() if k != "evictions"}}
    if moved is not None:
        summary["agents_before"] = moved.agents_before
        summary["agents_after"] = moved.agents_after
        summary["lower_bound"] = moved.lower_bound
        if moved.reason:
            summary["rebalance"] = moved.reason
        document["moves"] = [
            {"app": m.app_id, "instance": _instance(m.task_id)[1], "from": m.source, "to": m.target}
            for m in moved.moves
        ]
    document["summary"] = summary
    if output is not None:
        try:
            output.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as error:
            fail(escape(f"{output}: cannot write: {error.strerror or error}"), BAD_INPUT)
    _print_tables(summary, plan, snapshot.n_agents)
    if moved is not None:
        out.print(
            escape(moved.reason)
            if moved.reason and not moved.moves
            else f"rebalance: {len(moved.moves)} moves, agents in use {moved.agents_before} -> "
            f"{moved.agents_after} (lower bound {moved.lower_bound})"
        )


def _record(snapshot: Snapshot, plan: Plan, requests: list[Request]) -> None:
    """Turn the placements just planned into running tasks, so a rebalance may move them."""
    by_key = {request.key: request for request in requests}
    for placement in plan.placements:
        request = by_key[placement.key]
        task = RunningTask(
            _task_id(placement.key, placement.instance),
            placement.key,
            request.resources,
            placement.ports,
            request.role,
            request.priority,
        )
        snapshot.tasks.add(snapshot.index[placement.agent_id], task)
