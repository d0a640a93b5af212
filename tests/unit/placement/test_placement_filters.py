"""Each feasibility filter with plain numbers: how many tasks every agent can take."""

import numpy as np

from tessera.model.agent import AgentState
from tessera.model.constraints import parse_constraints
from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Policy, Request, Snapshot, place
from tessera.placement.context import Context
from tessera.placement.filters import (
    AgentChoiceFilter,
    AgentStateFilter,
    ConstraintFilter,
    PortFilter,
    ResourceFilter,
    RoleFilter,
)
from tessera.placement.types import UNLIMITED, Reason


def agent(name: str, cpus: float = 4, mem: float = 1024, **extra: object) -> AgentDescription:
    return AgentDescription(name, f"host-{name}", Resources(cpus=cpus, mem=mem), **extra)  # type: ignore[arg-type]


def context(snapshot: Snapshot, request: Request) -> Context:
    return Context(snapshot, request, request.demand(), request.count)


def copies(filter_: object, snapshot: Snapshot, request: Request) -> list[int] | None:
    result = filter_.copies(context(snapshot, request))  # type: ignore[attr-defined]
    return None if result is None else [int(x) for x in result]


def test_resource_filter_counts_whole_tasks() -> None:
    snapshot = Snapshot.build([agent("a", cpus=1.0), agent("b", cpus=0.3), agent("c", cpus=0.05)])
    request = Request("/app", 5, Resources(cpus=0.1))
    assert copies(ResourceFilter(0, Reason.INSUFFICIENT_CPUS), snapshot, request) == [10, 3, 0]


def test_resource_filter_ignores_resources_the_task_does_not_ask_for() -> None:
    snapshot = Snapshot.build([agent("a")])
    request = Request("/app", 1, Resources(cpus=1))
    assert copies(ResourceFilter(1, Reason.INSUFFICIENT_MEMORY), snapshot, request) is None


def test_resource_filter_sees_used_resources_and_running_tasks() -> None:
    from tessera.placement import RunningTask

    busy = agent(
        "a", mem=1000, used=Resources(mem=200), tasks=(RunningTask("t1", "/x", Resources(mem=300)),)
    )
    snapshot = Snapshot.build([busy])
    request = Request("/app", 1, Resources(mem=100))
    assert copies(ResourceFilter(1, Reason.INSUFFICIENT_MEMORY), snapshot, request) == [5]


def test_agent_state_filter_only_admits_active_agents() -> None:
    snapshot = Snapshot.build(
        [
            agent("a"),
            agent("b", state=AgentState.DRAINING),
            agent("c", state=AgentState.UNREACHABLE),
            agent("d", state=AgentState.GONE),
        ]
    )
    request = Request("/app", 1, Resources(cpus=1))
    assert copies(AgentStateFilter(), snapshot, request) == [UNLIMITED, 0, 0, 0]
    assert copies(AgentStateFilter(), Snapshot.build([agent("a")]), request) is None


def test_role_filter_keeps_reserved_agents_for_their_role() -> None:
    snapshot = Snapshot.build([agent("a"), agent("b", role="public"), agent("c", role="ml")])
    default = Request("/app", 1, Resources(cpus=1))
    public = Request("/lb", 1, Resources(cpus=1), role="public")
    assert copies(RoleFilter(), snapshot, default) == [UNLIMITED, 0, 0]
    assert copies(RoleFilter(), snapshot, public) == [UNLIMITED, UNLIMITED, 0]


def test_constraint_filter_combines_attribute_masks() -> None:
    snapshot = Snapshot.build(
        [
            agent("a", attributes={"rack": "r1", "class": "c1"}),
            agent("b", attributes={"rack": "r2", "class": "c1"}),
            agent("c", attributes={"class": "c2"}),
        ]
    )
    request = Request(
        "/app",
        1,
        Resources(cpus=1),
        constraints=parse_constraints([["class", "IS", "c1"], ["rack", "UNLIKE", "r1"]]),
    )
    assert copies(ConstraintFilter(), snapshot, request) == [0, UNLIMITED, 0]


def test_port_filter_counts_dynamic_ports() -> None:
    ports = (PortRange(31000, 31004),)
    snapshot = Snapshot.build(
        [
            AgentDescription("a", "h", Resources(cpus=1, ports=ports)),
            AgentDescription(
                "b", "h2", Resources(cpus=1, ports=ports), used_ports=(31000, 31001, 31002)
            ),
            AgentDescription("c", "h3", Resources(cpus=1)),
        ]
    )
    request = Request("/app", 1, Resources(cpus=0.1), ports=(0, 0))
    assert copies(PortFilter(), snapshot, request) == [2, 1, 0]
    assert copies(PortFilter(), snapshot, Request("/app", 1, Resources(cpus=0.1))) is None


def test_port_filter_allows_one_task_per_agent_with_required_ports() -> None:
    ports = (PortRange(31000, 31004),)
    snapshot = Snapshot.build(
        [
            AgentDescription("a", "h", Resources(cpus=1, ports=ports)),
            AgentDescription("b", "h2", Resources(cpus=1, ports=ports), used_ports=(31002,)),
            AgentDescription("c", "h3", Resources(cpus=1, ports=(PortRange(8000, 8080),))),
        ]
    )
    request = Request("/app", 2, Resources(cpus=0.1), ports=(31002, 0), require_ports=True)
    assert copies(PortFilter(), snapshot, request) == [1, 0, 0]
    outside = Request("/app", 2, Resources(cpus=0.1), ports=(80,), require_ports=True)
    assert copies(PortFilter(), snapshot, outside) == [0, 0, 0]


def test_ports_without_require_ports_are_dynamic() -> None:
    request = Request("/app", 1, Resources(), ports=(8080, 0))
    assert request.fixed_ports == ()
    assert request.dynamic_ports == 2
    assert np.array_equal(request.demand(), np.zeros(4))


def test_agent_choice_filter_keeps_the_named_agents_only() -> None:
    snapshot = Snapshot.build([agent("a"), agent("b"), agent("c")])
    anywhere = Request("/app", 1, Resources(cpus=1))
    assert copies(AgentChoiceFilter(), snapshot, anywhere) is None
    named = Request("/app", 1, Resources(cpus=1), agents=frozenset({"b", "gone"}))
    assert copies(AgentChoiceFilter(), snapshot, named) == [0, UNLIMITED, 0]


def test_a_request_that_names_an_agent_is_placed_there() -> None:
    snapshot = Snapshot.build([agent("a"), agent("b"), agent("c")])
    plan = place(
        snapshot, [Request("/app", 2, Resources(cpus=1), agents=frozenset({"c"}))], Policy()
    )
    assert [p.agent_id for p in plan.placements] == ["c", "c"]
