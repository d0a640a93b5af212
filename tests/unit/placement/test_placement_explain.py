"""Every unplaced request says why, agent by agent, with Marathon's reason names."""

from tessera.model.agent import AgentState
from tessera.model.constraints import parse_constraints
from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Plan, Policy, Request, Snapshot, place


def agent(name: str, **extra: object) -> AgentDescription:
    resources = Resources(cpus=4, mem=4096, disk=1000, gpus=1, ports=(PortRange(31000, 31001),))
    return AgentDescription(name, f"h-{name}", resources, {"zone": "a"}, **extra)  # type: ignore[arg-type]


def reasons(plan: Plan) -> dict[str, int]:
    assert len(plan.unplaced) == 1
    return dict(plan.unplaced[0].reasons)


def place_one(request: Request, *agents: AgentDescription, policy: Policy | None = None) -> Plan:
    return place(Snapshot.build(agents or (agent("a"), agent("b"))), [request], policy)


def test_insufficient_cpus() -> None:
    assert reasons(place_one(Request("/x", 1, Resources(cpus=5)))) == {"InsufficientCpus": 2}


def test_insufficient_memory() -> None:
    assert reasons(place_one(Request("/x", 1, Resources(mem=5000)))) == {"InsufficientMemory": 2}


def test_insufficient_disk() -> None:
    assert reasons(place_one(Request("/x", 1, Resources(disk=5000)))) == {"InsufficientDisk": 2}


def test_insufficient_gpus() -> None:
    assert reasons(place_one(Request("/x", 1, Resources(gpus=2)))) == {"InsufficientGpus": 2}


def test_insufficient_ports() -> None:
    plan = place_one(Request("/x", 1, Resources(cpus=1), ports=(0, 0, 0)))
    assert reasons(plan) == {"InsufficientPorts": 2}


def test_unfulfilled_constraint() -> None:
    constraints = parse_constraints([["zone", "IS", "b"]])
    plan = place_one(Request("/x", 1, Resources(cpus=1), constraints=constraints))
    assert reasons(plan) == {"UnfulfilledConstraint": 2}


def test_unfulfilled_role() -> None:
    plan = place_one(
        Request("/x", 1, Resources(cpus=1)), agent("a", role="ml"), agent("b", role="ml")
    )
    assert reasons(plan) == {"UnfulfilledRole": 2}


def test_agent_unavailable() -> None:
    plan = place_one(
        Request("/x", 1, Resources(cpus=1)),
        agent("a", state=AgentState.DRAINING),
        agent("b", state=AgentState.UNREACHABLE),
    )
    assert reasons(plan) == {"AgentUnavailable": 2}


def test_quota_exceeded_counts_the_agents_that_would_have_fit() -> None:
    policy = Policy(role_quotas={"dev": {"cpus": 2}})
    plan = place_one(Request("/x", 3, Resources(cpus=1), role="dev"), policy=policy)
    assert len(plan.placements) == 2
    assert plan.unplaced[0].count == 1
    assert reasons(plan) == {"QuotaExceeded": 2}


def test_each_agent_is_counted_once_under_its_first_failing_check() -> None:
    plan = place_one(
        Request("/x", 1, Resources(cpus=5, mem=5000)),
        agent("a", state=AgentState.DRAINING),
        agent("b"),
        agent("c", used=Resources(mem=4000)),
    )
    assert reasons(plan) == {"AgentUnavailable": 1, "InsufficientCpus": 2}


def test_partly_placed_requests_explain_the_rest() -> None:
    plan = place_one(Request("/x", 10, Resources(cpus=1)))
    assert len(plan.placements) == 8
    assert plan.unplaced[0].count == 2
    assert reasons(plan) == {"InsufficientCpus": 2}


def test_exhausted_constraints_are_unfulfilled_constraints() -> None:
    constraints = parse_constraints([["hostname", "UNIQUE"]])
    plan = place_one(Request("/x", 3, Resources(cpus=1), constraints=constraints))
    assert reasons(plan) == {"UnfulfilledConstraint": 2}
