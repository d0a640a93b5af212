"""Turns the master's records into a placement-engine call and the plan back into assignments.

Queued tasks of one shape (the same app, resources, ports, constraints, role and priority:
the instances of one app version, typically one deployment step) become one request of
that many instances, and everything queued when a pass runs is placed in one call, so the
engine's look-ahead packs the batch as `tessera simulate` does. Every task carries its role
and priority (TaskSpec) into the engine; running tasks carry theirs, so that a higher
priority may evict lower ones (tasks already being killed are never chosen again). The
roles' quotas and weights become the engine's policy: the engine enforces resource limits
and weighted fair order, and instances beyond a role's `instances` or `apps` limit are held
back here before the engine sees them. Whatever a quota keeps queued says `QuotaExceeded`
among its reasons. A moved instance's replacement goes to the agent its drain or rebalance
chose (`Task.target_agent`) when it still fits there, and anywhere else it may go when not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tessera.master.quotas import Quota, Usage
from tessera.model.agent import Agent, container_needs
from tessera.model.constraints import parse_constraints
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.placement import AgentDescription, Policy, Request, RunningTask, Snapshot, place
from tessera.placement.fairness import quota_copies
from tessera.placement.types import Reason

# The same look-ahead budget as `tessera simulate` (Policy's default): grouped by shape, a
# batch of 1,000 apps on a few hundred agents is planned with the look-ahead (a pass of
# about 1-2 s here, measured by bench.placement --parts master); larger levels are served
# largest first.
MASTER_POLICY = Policy()
QUOTA_EXCEEDED = Reason.QUOTA_EXCEEDED.value
# A task whose placement needs running tasks stopped first waits for them with this reason.
WAITING_FOR_PREEMPTION = "WaitingForPreemption"
# Tasks already being killed are not counted as victims again.
_NOT_EVICTABLE = 1 << 30


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
class Preemption:
    """`task_id` goes to `agent_id` once `victims` (running tasks there) have stopped."""

    task_id: str
    agent_id: str
    victims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlacementResult:
    assignments: list[Assignment] = field(default_factory=list)
    # task ID -> reason name -> number of agents that rejected it
    unplaced: dict[str, dict[str, int]] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)


def _resources(spec: TaskSpec) -> Resources:
    return Resources(cpus=spec.cpus, mem=spec.mem, disk=spec.disk, gpus=spec.gpus)


def _app_of(task: Task) -> str:
    return task.spec.app_id or task.id


def running_task(task: Task) -> RunningTask:
    priority = _NOT_EVICTABLE if task.state is TaskState.TASK_KILLING else task.spec.priority
    return RunningTask(
        task.id, _app_of(task), _resources(task.spec), task.ports, task.spec.role, priority
    )


def record_placed(snapshot: Snapshot, placed: Sequence[Task]) -> None:
    """Make tasks this pass placed (already charged to the snapshot by the plan) candidates
    for eviction in later passes that reuse the snapshot."""
    for task in placed:
        row = snapshot.index.get(task.agent_id or "")
        if row is not None:
            snapshot.tasks.add(row, running_task(task))


def describe(agent: Agent, running: Sequence[Task]) -> AgentDescription:
    return AgentDescription(
        id=agent.id,
        hostname=agent.hostname,
        resources=agent.resources,
        attributes=agent.attributes,
        tasks=tuple(running_task(task) for task in running),
        state=agent.state,
        capabilities=agent.capabilities(),
    )


def request_for(task: Task, count: int = 1) -> Request:
    """The engine's request for `count` tasks shaped like `task` (keyed by its id)."""
    request = spec_request(task.spec, task.id, _app_of(task), count)
    if task.target_agent:
        request = replace(request, agents=frozenset({task.target_agent}))
    return request


def spec_request(spec: TaskSpec, key: str, app_id: str, count: int = 1) -> Request:
    """The engine's request for `count` tasks of this spec."""
    return Request(
        key=key,
        app_id=app_id,
        count=count,
        resources=_resources(spec),
        ports=tuple(p.port for p in spec.port_definitions),
        require_ports=spec.require_ports,
        constraints=tuple(parse_constraints([list(c) for c in spec.constraints])),
        role=spec.role,
        priority=spec.priority,
        needs=container_needs(spec.container),
    )


def group_requests(queued: Sequence[Task]) -> tuple[list[Request], dict[str, list[Task]]]:
    """One request per shape of queued task, keyed by its first task's id; the tasks of
    each request in queue order (instance i of the plan is the i-th of them)."""
    shapes: dict[Request, list[Task]] = {}
    for task in queued:
        shape = replace(request_for(task), key="")
        shapes.setdefault(shape, []).append(task)
    requests = []
    members: dict[str, list[Task]] = {}
    for shape, tasks in shapes.items():
        request = replace(shape, key=tasks[0].id, count=len(tasks))
        requests.append(request)
        members[request.key] = tasks
    return requests, members


def build_snapshot(agents: Sequence[Agent], running: Mapping[str, Sequence[Task]]) -> Snapshot:
    return Snapshot.build(describe(agent, running.get(agent.id, ())) for agent in agents)


def policy_for(limits: Mapping[str, Quota]) -> Policy:
    """The master's policy with the roles' resource limits and weights."""
    role_quotas = {role: q.resource_limits() for role, q in limits.items() if q.resource_limits()}
    weights = {role: q.weight for role, q in limits.items() if q.weight is not None}
    if not role_quotas and not weights:
        return MASTER_POLICY
    return replace(MASTER_POLICY, role_quotas=role_quotas, role_weights=weights)


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
    """Place the queued tasks around what already runs, in one engine call, within the
    roles' quotas; the snapshot is updated in place with the plan (evictions included)."""
    limits = quotas.limits() if quotas is not None else {}
    held: list[Task] = []
    if quotas is not None and any(q.counts_limited() for q in limits.values()):
        counted = {role for role, q in limits.items() if q.counts_limited()}
        usage = {role: quotas.usage(role) for role in counted}
        queued, held = within_counts(queued, limits, usage)
    policy = policy_for(limits)
    result = PlacementResult()
    placed: set[str] = set()
    _place(snapshot, queued, policy, result, placed)
    retry = [t for t in queued if t.target_agent and t.id not in placed]
    if retry:
        # The chosen agent no longer has room (the cluster moved on): anywhere else.
        for task in retry:
            result.unplaced.pop(task.id, None)
        _place(snapshot, [t.with_changes(target_agent=None) for t in retry], policy, result, placed)
    for task in held:
        result.unplaced[task.id] = {QUOTA_EXCEEDED: snapshot.n_agents}
    return result


def _place(
    snapshot: Snapshot,
    queued: Sequence[Task],
    policy: Policy,
    result: PlacementResult,
    placed: set[str],
) -> None:
    requests, members = group_requests(queued)
    plan = place(snapshot, requests, policy)
    for placement in plan.placements:
        task = members[placement.key][placement.instance]
        placed.add(task.id)
        if placement.evicts:
            result.preemptions.append(Preemption(task.id, placement.agent_id, placement.evicts))
        else:
            result.assignments.append(
                Assignment(task.id, placement.agent_id, tuple(placement.ports))
            )
    by_key = {request.key: request for request in requests} if plan.unplaced else {}
    for unplaced in plan.unplaced:
        reasons = dict(unplaced.reasons)
        if QUOTA_EXCEEDED not in reasons and _over_quota(snapshot, policy, by_key[unplaced.key]):
            reasons[QUOTA_EXCEEDED] = snapshot.n_agents
        for task in members[unplaced.key]:
            if task.id not in placed:
                result.unplaced[task.id] = reasons


def _over_quota(snapshot: Snapshot, policy: Policy, request: Request) -> bool:
    """The role's resource quota has no room for one more task of this request.

    The engine names QuotaExceeded only for agents that pass every other check; a role at
    its limit on a full cluster is still held by its quota, so it says so either way."""
    if request.role not in policy.role_quotas:
        return False
    allocated = snapshot.allocated(request.role)
    return quota_copies(policy.quota(request.role), allocated, request.demand()) < 1
