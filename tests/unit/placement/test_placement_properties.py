"""Properties over random clusters and requests: no oversubscription, no broken constraint."""

from collections import Counter, defaultdict
from math import ceil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.model.agent import AgentState
from tessera.model.constraints import Constraint, Operator
from tessera.model.resources import PortRange, Resources
from tessera.placement import (
    AgentDescription,
    Plan,
    Policy,
    Reason,
    Request,
    RunningTask,
    Snapshot,
    Strategy,
    place,
)

EPS = 1e-6
ZONES = ("a", "b", "c")
PORTS = (PortRange(31000, 31007),)


@st.composite
def running_tasks(draw: st.DrawFn, agent: int) -> tuple[RunningTask, ...]:
    count = draw(st.integers(0, 2))
    return tuple(
        RunningTask(
            f"t{agent}-{i}",
            f"/running/{i}",
            Resources(cpus=draw(st.sampled_from([0.5, 1.0])), mem=draw(st.sampled_from([64, 256]))),
            ports=(31000 + i,) if draw(st.booleans()) else (),
            role=draw(st.sampled_from(["*", "dev"])),
            priority=draw(st.integers(0, 3)),
        )
        for i in range(count)
    )


@st.composite
def agents(draw: st.DrawFn) -> list[AgentDescription]:
    n = draw(st.integers(1, 7))
    result = []
    for i in range(n):
        attributes = {"zone": draw(st.sampled_from(ZONES))}
        if draw(st.booleans()):
            attributes["rack"] = f"r{draw(st.integers(0, 3))}"
        tasks = draw(running_tasks(i))
        used = Resources(cpus=draw(st.sampled_from([0.0, 0.5])))
        held = sum((t.resources for t in tasks), used)  # running tasks fit on their agent
        result.append(
            AgentDescription(
                f"a{i}",
                f"h{draw(st.integers(0, n - 1))}",  # several agents may share a host
                Resources(
                    cpus=held.cpus + draw(st.sampled_from([0.0, 1.0, 2.0, 4.0])),
                    mem=held.mem + draw(st.sampled_from([0, 512, 1024, 4096])),
                    disk=draw(st.sampled_from([0, 1000])),
                    gpus=draw(st.integers(0, 1)),
                    ports=PORTS if draw(st.booleans()) else (),
                ),
                attributes,
                used=used,
                tasks=tasks,
                state=draw(st.sampled_from([AgentState.ACTIVE] * 4 + [AgentState.DRAINING])),
                role=draw(st.sampled_from(["*", "*", "*", "dev"])),
            )
        )
    return result


CONSTRAINTS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            Constraint("hostname", Operator.UNIQUE),
            Constraint("zone", Operator.UNIQUE),
            Constraint("rack", Operator.UNIQUE),
            Constraint("zone", Operator.CLUSTER),
            Constraint("zone", Operator.CLUSTER, "b"),
            Constraint("zone", Operator.GROUP_BY),
            Constraint("hostname", Operator.GROUP_BY),
            Constraint("zone", Operator.GROUP_BY, "4"),
            Constraint("rack", Operator.LIKE, "r[01]"),
            Constraint("rack", Operator.UNLIKE, "r[01]"),
            Constraint("hostname", Operator.MAX_PER, "2"),
            Constraint("zone", Operator.MAX_PER, "1"),
            Constraint("zone", Operator.IS, "a"),
        ]
    ),
)


@st.composite
def requests(draw: st.DrawFn, most_constraints: int = 1) -> list[Request]:
    result = []
    for i in range(draw(st.integers(1, 5))):
        constraints = draw(st.lists(CONSTRAINTS, max_size=most_constraints))
        require = draw(st.booleans())
        result.append(
            Request(
                f"/app{i}",
                draw(st.integers(0, 8)),
                Resources(
                    cpus=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])),
                    mem=draw(st.sampled_from([0, 32, 300, 2000])),
                    disk=draw(st.sampled_from([0, 100])),
                    gpus=draw(st.sampled_from([0, 0, 1])),
                ),
                ports=draw(st.sampled_from([(), (0,), (0, 0), (31003,), (31001, 0)])),
                require_ports=require,
                constraints=tuple(c for c in constraints if c is not None),
                role=draw(st.sampled_from(["*", "dev"])),
                priority=draw(st.integers(0, 4)),
            )
        )
    return result


POLICIES = st.builds(
    Policy,
    strategy=st.sampled_from(list(Strategy)),
    role_weights=st.sampled_from([{}, {"dev": 2.0}]),
    role_quotas=st.sampled_from([{}, {"dev": {"cpus": 1.5}}, {"*": {"mem": 1000}}]),
    preemption=st.booleans(),
)


def _check_resources_and_ports(
    described: list[AgentDescription], requests: list[Request], plan: Plan
) -> None:
    by_key = {r.key: r for r in requests}
    evicted = {e.task_id for e in plan.evictions}
    assert len(evicted) == len(plan.evictions)
    for agent in described:
        used = agent.used.scalars()
        ports: list[int] = list(agent.used_ports)
        for task in agent.tasks:
            if task.task_id not in evicted:
                for name, value in task.resources.scalars().items():
                    used[name] += value
                ports.extend(task.ports)
        for placement in plan.placements:
            if placement.agent_id == agent.id:
                for name, value in by_key[placement.key].resources.scalars().items():
                    used[name] += value
                ports.extend(placement.ports)
                assert all(any(p in r for r in agent.resources.ports) for p in placement.ports)
        for name, value in used.items():
            assert value <= agent.resources.scalars()[name] + EPS, (agent.id, name)
        assert len(ports) == len(set(ports)), agent.id


def _values(agents: dict[str, AgentDescription], field: str, agent_id: str) -> str | None:
    agent = agents[agent_id]
    return agent.hostname if field == "hostname" else agent.attributes.get(field)


def _check_constraint(
    agents: dict[str, AgentDescription], request: Request, constraint: Constraint, placed: list[str]
) -> None:
    values = [_values(agents, constraint.field, agent_id) for agent_id in placed]
    counts = Counter(values)
    op = constraint.operator
    if op is Operator.UNLIKE:
        assert all(v is None or not constraint.pattern.fullmatch(v) for v in values)
        return
    assert None not in counts
    if op is Operator.UNIQUE:
        assert all(c == 1 for c in counts.values())
    elif op is Operator.MAX_PER:
        assert all(c <= constraint.count for c in counts.values())
    elif op is Operator.CLUSTER:
        assert len(counts) <= 1 and (constraint.value is None or set(counts) <= {constraint.value})
    elif op is Operator.IS:
        assert set(counts) <= {constraint.value}
    elif op is Operator.LIKE:
        assert all(constraint.pattern.fullmatch(str(v)) for v in values)
    elif op is Operator.GROUP_BY and len(request.constraints) == 1:
        eligible = {
            _values(agents, constraint.field, a.id)
            for a in agents.values()
            if a.state is AgentState.ACTIVE and a.role in ("*", request.role)
        } - {None}
        slots = max(constraint.count, len(eligible))
        assert max(counts.values(), default=0) <= ceil(request.count / max(slots, 1))
        spread = [counts.get(value, 0) for value in eligible]
        assert max(spread, default=0) - min(spread, default=0) <= 1


def _check_quota_and_evictions(
    described: list[AgentDescription], requests: list[Request], policy: Policy, plan: Plan
) -> None:
    by_key = {r.key: r for r in requests}
    tasks = {t.task_id: t for a in described for t in a.tasks}
    for eviction in plan.evictions:
        assert tasks[eviction.task_id].priority < by_key[eviction.for_key].priority
    evicted = {e.task_id for e in plan.evictions}
    for role, quota in policy.role_quotas.items():
        before: defaultdict[str, float] = defaultdict(float)
        kept: defaultdict[str, float] = defaultdict(float)
        for task in tasks.values():
            if task.role == role:
                for name, value in task.resources.scalars().items():
                    before[name] += value
                    kept[name] += 0 if task.task_id in evicted else value
        for name, limit in quota.items():
            added = sum(
                by_key[p.key].resources.scalars()[name]
                for p in plan.placements
                if by_key[p.key].role == role
            )
            if added:
                assert kept[name] + added <= max(limit, before[name]) + EPS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(described=agents(), requests=requests(), policy=POLICIES)
def test_plans_never_oversubscribe_or_break_constraints(
    described: list[AgentDescription], requests: list[Request], policy: Policy
) -> None:
    _check_plan(described, requests, policy, place(Snapshot.build(described), requests, policy))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(described=agents(), requests=requests(most_constraints=3), policy=POLICIES)
def test_several_constraints_at_once_all_hold(
    described: list[AgentDescription], requests: list[Request], policy: Policy
) -> None:
    _check_plan(described, requests, policy, place(Snapshot.build(described), requests, policy))


def _check_plan(
    described: list[AgentDescription], requests: list[Request], policy: Policy, plan: Plan
) -> None:
    by_id = {a.id: a for a in described}
    _check_resources_and_ports(described, requests, plan)
    _check_quota_and_evictions(described, requests, policy, plan)
    reason_names = {reason.value for reason in Reason}
    for request in requests:
        placed = [p.agent_id for p in plan.placements if p.key == request.key]
        unplaced = sum(u.count for u in plan.unplaced if u.key == request.key)
        assert len(placed) + unplaced == request.count
        instances = sorted(p.instance for p in plan.placements if p.key == request.key)
        assert instances == list(range(len(placed)))
        for agent_id in placed:
            agent = by_id[agent_id]
            assert agent.state is AgentState.ACTIVE
            assert agent.role in ("*", request.role)
        for constraint in request.constraints:
            _check_constraint(by_id, request, constraint, placed)
    for item in plan.unplaced:
        assert set(item.reasons) <= reason_names
        assert sum(item.reasons.values()) <= len(described)
