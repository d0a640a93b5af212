"""Turns the master's records into a placement-engine call and the plan back into assignments.

Every task carries its role (TaskSpec.role) into the engine, and the roles' quotas become
the engine's policy: the engine enforces resource limits, and instances beyond a role's
`instances` or `apps` limit are held back here before the engine sees them. Whatever a
quota keeps queued says `QuotaExceeded` among its reasons. Without any quota the engine is
called exactly as before (the same policy object, the same requests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tessera.master.quotas import Quota, Usage
from tessera.model.agent import Agent, container_needs
from tessera.model.constraints import parse_constraints
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec
from tessera.placement import AgentDescription, Policy, Request, RunningTask, Snapshot, place
from tessera.placement.fairness import quota_copies
from tessera.placement.types import Reason

# The master places on every wake-up, often a few tasks at a time and at most a backlog:
# a small look-ahead budget keeps each pass to milliseconds (see Policy.lookahead_budget).
MASTER_POLICY = Policy(lookahead_budget=20_000)
QUOTA_EXCEEDED = Reason.QUOTA_EXCEEDED.value


class QuotaSource(Protocol):
    """The roles' quotas and what each role's active tasks hold (master.quotas.Quotas)."""

    def limits(self) -> Mapping[str, Quota]: ...

    def usage(self, role: str) -> Usage: ...


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
            RunningTask(task.id, _app_of(task), _resources(task.spec), task.ports, task.spec.role)
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
        role=spec.role,
        needs=container_needs(spec.container),
    )


def build_snapshot(agents: Sequence[Agent], running: Mapping[str, Sequence[Task]]) -> Snapshot:
    return Snapshot.build(describe(agent, running.get(agent.id, ())) for agent in agents)


def policy_for(limits: Mapping[str, Quota]) -> Policy:
    """The master's policy with the roles' resource limits."""
    role_quotas = {role: q.resource_limits() for role, q in limits.items() if q.resource_limits()}
    if not role_quotas:
        return MASTER_POLICY
    return Policy(lookahead_budget=MASTER_POLICY.lookahead_budget, role_quotas=role_quotas)


def within_counts(
    queued: Sequence[Task], limits: Mapping[str, Quota], usage: Mapping[str, Usage]
) -> tuple[list[Task], list[Task]]:
    """Split the queue into the tasks a pass may place and those a role's `instances` or
    `apps` limit holds back. Higher priorities, then older tasks, get the room first."""
    room: dict[str, int] = {}
    new_apps: dict[str, int] = {}
    running_apps: dict[str, set[str]] = {}
    for role, quota in limits.items():
        used = usage.get(role, Usage())
        if quota.instances is not None:
            room[role] = quota.instances - used.instances
        if quota.apps is not None:
            new_apps[role] = quota.apps - used.apps
            running_apps[role] = set(used.app_ids)
    admitted: list[Task] = []
    held: list[Task] = []
    for task in sorted(queued, key=lambda t: -t.spec.priority):  # stable: keeps queue order
        role, app = task.spec.role, task.spec.app_id
        fits = room.get(role, 1) > 0
        starts_app = app is not None and role in running_apps and app not in running_apps[role]
        if starts_app and new_apps[role] <= 0:
            fits = False
        if not fits:
            held.append(task)
            continue
        admitted.append(task)
        if role in room:
            room[role] -= 1
        if starts_app and app is not None:
            new_apps[role] -= 1
            running_apps[role].add(app)
    return admitted, held


def place_tasks(
    snapshot: Snapshot, queued: Sequence[Task], quotas: QuotaSource | None = None
) -> PlacementResult:
    """Place each queued task (a group of one) around what already runs, within the roles'
    quotas; the snapshot is updated in place with the placements."""
    limits = quotas.limits() if quotas is not None else {}
    held: list[Task] = []
    if quotas is not None and any(q.counts_limited() for q in limits.values()):
        counted = {role for role, q in limits.items() if q.counts_limited()}
        usage = {role: quotas.usage(role) for role in counted}
        queued, held = within_counts(queued, limits, usage)
    policy = policy_for(limits)
    requests = [request_for(task) for task in queued]
    plan = place(snapshot, requests, policy)
    result = PlacementResult()
    for placement in plan.placements:
        result.assignments.append(
            Assignment(placement.key, placement.agent_id, tuple(placement.ports))
        )
    by_key = {request.key: request for request in requests} if plan.unplaced else {}
    for unplaced in plan.unplaced:
        reasons = dict(unplaced.reasons)
        if QUOTA_EXCEEDED not in reasons and _over_quota(snapshot, policy, by_key[unplaced.key]):
            reasons[QUOTA_EXCEEDED] = snapshot.n_agents
        result.unplaced[unplaced.key] = reasons
    for task in held:
        result.unplaced[task.id] = {QUOTA_EXCEEDED: snapshot.n_agents}
    return result


def _over_quota(snapshot: Snapshot, policy: Policy, request: Request) -> bool:
    """The role's resource quota has no room for one more task of this request.

    The engine names QuotaExceeded only for agents that pass every other check; a role at
    its limit on a full cluster is still held by its quota, so it says so either way."""
    if request.role not in policy.role_quotas:
        return False
    allocated = snapshot.allocated(request.role)
    return quota_copies(policy.quota(request.role), allocated, request.demand()) < 1
