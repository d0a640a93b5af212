"""Turns the master's records into a placement-engine call and the plan back into assignments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tessera.model.agent import Agent, container_needs
from tessera.model.constraints import parse_constraints
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec
from tessera.placement import AgentDescription, Policy, Request, RunningTask, Snapshot, place

# The master places on every wake-up, often a few tasks at a time and at most a backlog:
# a small look-ahead budget keeps each pass to milliseconds (see Policy.lookahead_budget).
MASTER_POLICY = Policy(lookahead_budget=20_000)


@dataclass(frozen=True, slots=True)
class Assignment:
    task_id: str
    agent_id: str
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PlacementResult:
    assignments: list[Assignment] = field(default_factory=list)
    # task ID -> reason name -> number of agents that rejected it
    unplaced: dict[str, dict[str, int]] = field(default_factory=dict)


def _resources(spec: TaskSpec) -> Resources:
    return Resources(cpus=spec.cpus, mem=spec.mem, disk=spec.disk, gpus=spec.gpus)


def _app_of(task: Task) -> str:
    return task.spec.app_id or task.id


def describe(agent: Agent, running: Sequence[Task]) -> AgentDescription:
    return AgentDescription(
        id=agent.id,
        hostname=agent.hostname,
        resources=agent.resources,
        attributes=agent.attributes,
        tasks=tuple(
            RunningTask(task.id, _app_of(task), _resources(task.spec), task.ports)
            for task in running
        ),
        state=agent.state,
        capabilities=agent.capabilities(),
    )


def request_for(task: Task) -> Request:
    spec = task.spec
    return Request(
        key=task.id,
        app_id=_app_of(task),
        count=1,
        resources=_resources(spec),
        ports=tuple(p.port for p in spec.port_definitions),
        require_ports=spec.require_ports,
        constraints=tuple(parse_constraints([list(c) for c in spec.constraints])),
        needs=container_needs(spec.container),
    )


def build_snapshot(agents: Sequence[Agent], running: Mapping[str, Sequence[Task]]) -> Snapshot:
    return Snapshot.build(describe(agent, running.get(agent.id, ())) for agent in agents)


def place_tasks(snapshot: Snapshot, queued: Sequence[Task]) -> PlacementResult:
    """Place each queued task (a group of one) around what already runs; the snapshot is
    updated in place with the placements."""
    plan = place(snapshot, [request_for(task) for task in queued], MASTER_POLICY)
    result = PlacementResult()
    for placement in plan.placements:
        result.assignments.append(
            Assignment(placement.key, placement.agent_id, tuple(placement.ports))
        )
    for unplaced in plan.unplaced:
        result.unplaced[unplaced.key] = dict(unplaced.reasons)
    return result
