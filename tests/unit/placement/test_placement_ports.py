"""Host ports: dynamic from the agent's ranges, fixed when required, never shared on an agent."""

import numpy as np

from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Request, RunningTask, Snapshot, place
from tessera.placement.ports import PortTable


def test_port_table_spans_only_offered_ports() -> None:
    table = PortTable(
        [(PortRange(31000, 31002),), (PortRange(31001, 31004),), ()], [(31001,), (), ()]
    )
    assert table.base == 31000
    assert table.free.shape == (3, 5)
    assert table.counts.tolist() == [2, 4, 0]
    assert table.all_free([31000, 31002]).tolist() == [True, False, False]
    assert table.all_free([30000]).tolist() == [False, False, False]


def test_take_and_release() -> None:
    table = PortTable([(PortRange(31000, 31009),)], [()])
    assert table.take(0, [31005], 2) == [31000, 31001]
    assert table.counts.tolist() == [7]
    table.release(0, [31000, 31005, 31005, 40000])
    assert table.counts.tolist() == [9]
    assert table.take(0, [], 1) == [31000]


def test_no_ports_anywhere() -> None:
    table = PortTable([(), ()], [(), ()])
    assert table.counts.tolist() == [0, 0]
    assert table.all_free([80]).tolist() == [False, False]


def test_dynamic_ports_are_distinct_on_an_agent() -> None:
    snapshot = Snapshot.build(
        [AgentDescription("a", "h", Resources(cpus=8, ports=(PortRange(31000, 31005),)))]
    )
    plan = place(snapshot, [Request("/x", 4, Resources(cpus=1), ports=(0, 0))])
    assert len(plan.placements) == 3
    ports = [port for p in plan.placements for port in p.ports]
    assert sorted(ports) == list(range(31000, 31006))


def test_required_ports_in_definition_order() -> None:
    snapshot = Snapshot.build(
        [
            AgentDescription(
                "a", "h", Resources(cpus=8, ports=(PortRange(31000, 31010),)), used_ports=(31005,)
            ),
            AgentDescription("b", "h2", Resources(cpus=8, ports=(PortRange(31000, 31010),))),
        ]
    )
    plan = place(
        snapshot, [Request("/x", 2, Resources(cpus=1), ports=(0, 31005), require_ports=True)]
    )
    assert [(p.agent_id, p.ports) for p in plan.placements] == [("b", (31000, 31005))]
    assert plan.unplaced[0].reasons == {"InsufficientPorts": 2}


def test_running_tasks_hold_their_ports() -> None:
    running = (RunningTask("t", "/y", Resources(), ports=(31000,)),)
    snapshot = Snapshot.build(
        [
            AgentDescription(
                "a", "h", Resources(cpus=8, ports=(PortRange(31000, 31001),)), tasks=running
            )
        ]
    )
    plan = place(snapshot, [Request("/x", 2, Resources(cpus=1), ports=(0,))])
    assert [p.ports for p in plan.placements] == [(31001,)]


def test_ports_are_freed_by_evictions() -> None:
    running = (RunningTask("t", "/y", Resources(cpus=1), ports=(31000,), priority=0),)
    snapshot = Snapshot.build(
        [
            AgentDescription(
                "a", "h", Resources(cpus=1, ports=(PortRange(31000, 31000),)), tasks=running
            )
        ]
    )
    snapshot.evict(0)
    assert np.array_equal(snapshot.ports.counts, [1])


def test_released_ports_the_agent_does_not_offer_stay_unavailable() -> None:
    table = PortTable([(PortRange(31000, 31001),), (PortRange(31005, 31006),)], [(), ()])
    table.release(1, [31000])
    assert table.counts.tolist() == [2, 2]
    assert not table.free[1, 0]


def test_dynamic_ports_are_drawn_outside_the_ports_others_require() -> None:
    table = PortTable([(PortRange(31000, 31009),)], [()])
    assert table.take(0, [], 2, avoid=[31000, 31001]) == [31002, 31003]
    # Only avoided ports left: they are still given rather than refusing the task.
    small = PortTable([(PortRange(31000, 31001),)], [()])
    assert small.take(0, [], 2, avoid=[31000]) == [31001, 31000]


def test_a_dynamic_port_never_takes_the_port_a_task_of_the_same_call_requires() -> None:
    # One agent with four ports: the large task (placed first) draws two dynamic ports;
    # drawn lowest first they would take 31000, which the small task requires.
    snapshot = Snapshot.build(
        [AgentDescription("a", "h", Resources(cpus=8, mem=8192, ports=(PortRange(31000, 31003),)))]
    )
    requests = [
        Request("/dynamic", 1, Resources(cpus=4, mem=4096), ports=(0, 0)),
        Request("/pinned", 1, Resources(cpus=1, mem=512), ports=(31000,), require_ports=True),
    ]
    plan = place(snapshot, requests)
    assert plan.unplaced == ()
    ports = {p.key: p.ports for p in plan.placements}
    assert ports["/pinned"] == (31000,)
    assert 31000 not in ports["/dynamic"]
