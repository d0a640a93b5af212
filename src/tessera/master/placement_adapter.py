"""Turns the master's records into a placement call and its plan back into assignments.

TEMPORARY: until the placement engine (`tessera.placement`) lands, this holds a small
first-fit placer with the same inputs and outputs, so the planner does not change when the
engine replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tessera.model.agent import Agent, AgentState
from tessera.model.task import Task


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


@dataclass
class _Free:
    cpus: float
    mem: float
    disk: float
    gpus: float
    ports: set[int]


def _free_of(agent: Agent, running: Iterable[Task]) -> _Free:
    free = _Free(
        agent.resources.cpus,
        agent.resources.mem,
        agent.resources.disk,
        agent.resources.gpus,
        {p for r in agent.resources.ports for p in range(r.begin, r.end + 1)},
    )
    for task in running:
        free.cpus -= task.spec.cpus
        free.mem -= task.spec.mem
        free.disk -= task.spec.disk
        free.gpus -= task.spec.gpus
        free.ports.difference_update(task.ports)
    return free


def place_tasks(
    agents: Sequence[Agent], running: dict[str, list[Task]], queued: Sequence[Task]
) -> PlacementResult:
    result = PlacementResult()
    frees = {
        agent.id: _free_of(agent, running.get(agent.id, ()))
        for agent in agents
        if agent.state is AgentState.ACTIVE
    }
    for task in queued:
        spec = task.spec
        reasons: dict[str, int] = {}
        unavailable = len(agents) - len(frees)
        if unavailable:
            reasons["AgentUnavailable"] = unavailable
        for agent_id, free in frees.items():
            wanted = [p.port for p in spec.port_definitions]
            short = _shortage(free, task, wanted)
            if short:
                reasons[short] = reasons.get(short, 0) + 1
                continue
            ports = _take_ports(free, wanted)
            free.cpus -= spec.cpus
            free.mem -= spec.mem
            free.disk -= spec.disk
            free.gpus -= spec.gpus
            result.assignments.append(Assignment(task.id, agent_id, ports))
            break
        else:
            result.unplaced[task.id] = reasons
    return result


def _shortage(free: _Free, task: Task, wanted_ports: list[int]) -> str | None:
    spec = task.spec
    if free.cpus + 1e-9 < spec.cpus:
        return "InsufficientCpus"
    if free.mem + 1e-9 < spec.mem:
        return "InsufficientMemory"
    if free.disk + 1e-9 < spec.disk:
        return "InsufficientDisk"
    if free.gpus < spec.gpus:
        return "InsufficientGpus"
    fixed = [p for p in wanted_ports if p]
    dynamic = len(wanted_ports) - len(fixed)
    if any(p not in free.ports for p in fixed) or len(free.ports) - len(fixed) < dynamic:
        return "InsufficientPorts"
    return None


def _take_ports(free: _Free, wanted: list[int]) -> tuple[int, ...]:
    taken: list[int] = []
    for port in wanted:
        chosen = port or min(free.ports)
        free.ports.discard(chosen)
        taken.append(chosen)
    return tuple(taken)
