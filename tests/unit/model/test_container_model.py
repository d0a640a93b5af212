"""Container value types: the image reference grammar, store JSON, and what tasks carry."""

from __future__ import annotations

import pytest

from tessera.model.agent import Agent, AgentState, container_needs, registered_containers
from tessera.model.container import (
    ContainerSpec,
    PortMapping,
    Volume,
    image_reference_error,
)
from tessera.model.protocol import StatusUpdate
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec, TaskState, ip_addresses

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "reference",
    [
        "busybox",
        "library/busybox:1.36",
        "registry:5000/team/app@" + DIGEST,
        "127.0.0.1:5000/team/app:1.0",
        "localhost/app",
        "docker.io/library/nginx:1.25-alpine",
        "ghcr.io/org/sub/app_name:v1.2.3",
        "a__b/c-d--e.f:TAG_1",
        "app:1.0@" + DIGEST,
        "[::1]:5000/app",
    ],
)
def test_valid_references(reference: str) -> None:
    assert image_reference_error(reference) is None


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("", "empty"),
        (" busybox", "whitespace"),
        ("UPPER/case", "lowercase"),
        ("app:", "tag"),
        (":tag", "repository name"),
        ("a//b", "repository name"),
        ("app@sha256:short", "digest"),
        ("app:" + "x" * 129, "tag"),
        ("-app", "repository name"),
        ("bad_host:5000:x/app", "invalid registry"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_invalid_references(reference: str, fragment: str) -> None:
    problem = image_reference_error(reference)
    assert problem is not None and fragment in problem


def _spec() -> ContainerSpec:
    return ContainerSpec(
        type="DOCKER",
        image="127.0.0.1:5000/team/app:1.0",
        force_pull=True,
        privileged=True,
        parameters=(("label", "a=b"), ("env", "X=1")),
        network="bridge",
        port_mappings=(
            PortMapping(80, 0, 10000, "tcp", "http", {"VIP_0": "/web:80"}),
            PortMapping(0, 31053, 0, "udp,tcp"),
        ),
        volumes=(Volume("/data", "/srv/data", "RO"),),
        credential=("me", "secret"),
    )


def test_container_spec_json_round_trip() -> None:
    spec = _spec()
    assert ContainerSpec.from_json(spec.to_json()) == spec
    assert spec.bridged and not ContainerSpec("MESOS", "busybox").bridged


def test_task_spec_carries_the_container_and_old_tasks_still_load() -> None:
    spec = TaskSpec(name="web", cmd="serve", container=_spec())
    assert TaskSpec.from_json(spec.to_json()) == spec
    stored = TaskSpec(name="web", cmd="serve").to_json()
    assert stored["container"] is None
    del stored["container"]  # written before containers existed
    assert TaskSpec.from_json(stored).container is None


def test_task_ip_addresses_round_trip_and_marathon_view() -> None:
    task = Task("t1", TaskSpec(name="web"), TaskState.TASK_RUNNING, 0.0, 0.0, hostname="10.0.0.5")
    assert ip_addresses(task) == [{"ipAddress": "10.0.0.5", "protocol": "IPv4"}]
    assert ip_addresses(task.with_changes(hostname="node-1")) == []
    bridged = task.with_changes(ip_addresses=("172.31.0.7", "fd00::7"))
    assert ip_addresses(bridged) == [
        {"ipAddress": "172.31.0.7", "protocol": "IPv4"},
        {"ipAddress": "fd00::7", "protocol": "IPv6"},
    ]
    assert Task.from_json(bridged.to_json()) == bridged
    old = bridged.to_json()
    del old["ip_addresses"]
    assert Task.from_json(old).ip_addresses == ()


def test_status_update_ip_addresses() -> None:
    update = StatusUpdate("u", "t", TaskState.TASK_RUNNING, 1.0, ip_addresses=("172.31.0.7",))
    assert StatusUpdate.from_json(update.to_json()) == update
    plain = update.to_json()
    del plain["ip_addresses"]
    assert StatusUpdate.from_json(plain).ip_addresses == ()


def test_agent_containers_and_capabilities() -> None:
    agent = Agent("a1", "h1", Resources(cpus=1, mem=1), {}, AgentState.ACTIVE, 0.0)
    assert agent.containers is None and agent.capabilities() == frozenset()
    runtime = registered_containers({"runtime": "runc 1.1.5", "bridge": True, "privileged": False})
    with_runtime = agent.with_changes(containers=runtime)
    assert with_runtime.capabilities() == {"containers", "containers.bridge"}
    assert Agent.from_json(with_runtime.to_json()) == with_runtime
    stored = agent.to_json()
    del stored["containers"]
    assert Agent.from_json(stored).containers is None
    assert registered_containers(None) is None
    assert registered_containers("runc") is None  # malformed: no container tasks


def test_container_needs() -> None:
    assert container_needs(None) == frozenset()
    assert container_needs(ContainerSpec("MESOS", "busybox")) == {"containers"}
    assert container_needs(_spec()) == {
        "containers",
        "containers.bridge",
        "containers.privileged",
    }
