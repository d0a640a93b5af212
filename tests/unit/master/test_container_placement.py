"""Container tasks go only to agents with a container runtime (and bridge networking, or
privileged containers, when they need them); the others count as UnsupportedContainerRuntime.
Bridged tasks get one host port per port mapping, fixed and drawn ones mixed."""

from __future__ import annotations

from typing import Any

from tessera.master.placement_adapter import build_snapshot, place_tasks
from tessera.model.agent import Agent, AgentState
from tessera.model.container import ContainerSpec, PortMapping
from tessera.model.resources import PortRange, Resources
from tessera.model.task import PortDefinition, Task, TaskSpec, TaskState

RUNC: dict[str, Any] = {"runtime": "runc 1.1.5", "bridge": False, "privileged": False}


def _agent(agent_id: str, containers: dict[str, Any] | None) -> Agent:
    return Agent(
        id=agent_id,
        hostname=f"{agent_id}.local",
        resources=Resources(cpus=4, mem=4096, ports=(PortRange(31000, 31009),)),
        attributes={},
        state=AgentState.ACTIVE,
        registered_at=0.0,
        containers=containers,
    )


def _task(task_id: str, container: ContainerSpec | None, ports: tuple[int, ...] = ()) -> Task:
    spec = TaskSpec(
        name="web",
        cmd="serve",
        cpus=0.1,
        mem=32,
        port_definitions=tuple(PortDefinition(p) for p in ports),
        require_ports=bool(ports),
        container=container,
        app_id="/web",
    )
    return Task(task_id, spec, TaskState.TASK_QUEUED, 0.0, 0.0)


IMAGE = ContainerSpec("DOCKER", "busybox")
BRIDGED = ContainerSpec("DOCKER", "busybox", network="bridge")
PRIVILEGED = ContainerSpec("DOCKER", "busybox", privileged=True)


def test_container_tasks_need_a_runtime_and_the_rest_count_as_unsupported() -> None:
    agents = [_agent("plain1", None), _agent("plain2", None)]
    result = place_tasks(build_snapshot(agents, {}), [_task("t1", IMAGE)])
    assert result.assignments == []
    assert result.unplaced["t1"] == {"UnsupportedContainerRuntime": 2}
    # Plain tasks still go anywhere.
    plain = place_tasks(build_snapshot(agents, {}), [_task("t2", None)])
    assert len(plain.assignments) == 1


def test_a_container_task_is_placed_on_an_agent_with_a_runtime() -> None:
    agents = [_agent("plain", None), _agent("runc", RUNC)]
    result = place_tasks(build_snapshot(agents, {}), [_task("t1", IMAGE)])
    assert [a.agent_id for a in result.assignments] == ["runc"]


def test_bridged_and_privileged_containers_need_those_capabilities() -> None:
    agents = [
        _agent("plain", None),
        _agent("runc", RUNC),
        _agent("bridge", {**RUNC, "bridge": True}),
        _agent("priv", {**RUNC, "privileged": True}),
    ]
    snapshot = build_snapshot(agents, {})
    result = place_tasks(snapshot, [_task("b", BRIDGED), _task("p", PRIVILEGED)])
    placed = {a.task_id: a.agent_id for a in result.assignments}
    assert placed == {"b": "bridge", "p": "priv"}
    nowhere = place_tasks(
        build_snapshot(agents[:2], {}),
        [_task("b", BRIDGED)],
    )
    assert nowhere.unplaced["b"] == {"UnsupportedContainerRuntime": 2}


def test_mixed_fixed_and_dynamic_host_ports_keep_the_mapping_order() -> None:
    container = ContainerSpec(
        "DOCKER",
        "busybox",
        network="bridge",
        port_mappings=(PortMapping(80, 0), PortMapping(53, 31005), PortMapping(0, 0)),
    )
    agents = [_agent("bridge", {**RUNC, "bridge": True})]
    snapshot = build_snapshot(agents, {})
    first = place_tasks(snapshot, [_task("t1", container, (0, 31005, 0))])
    (assignment,) = first.assignments
    assert assignment.ports[1] == 31005
    drawn = [assignment.ports[0], assignment.ports[2]]
    assert len(set(drawn)) == 2 and 31005 not in drawn
    assert all(31000 <= port <= 31009 for port in drawn)
    # The fixed port is taken now: a second copy does not fit on that agent.
    second = place_tasks(snapshot, [_task("t2", container, (0, 31005, 0))])
    assert second.assignments == []
    assert second.unplaced["t2"] == {"InsufficientPorts": 1}
