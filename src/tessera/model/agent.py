"""The master's record of an agent: what the machine offers and whether it is reachable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tessera.model.container import ContainerSpec
from tessera.model.resources import Resources


class AgentState(StrEnum):
    ACTIVE = "ACTIVE"
    UNREACHABLE = "UNREACHABLE"
    # Taking no new work while its tasks move away (`tessera agent drain`), then DRAINED
    # once nothing runs there; `tessera agent reactivate` makes it ACTIVE again.
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"
    GONE = "GONE"

    @property
    def reachable(self) -> bool:
        """Connected (or in its registration window): heartbeats are expected from it."""
        return self in (AgentState.ACTIVE, AgentState.DRAINING, AgentState.DRAINED)


@dataclass(frozen=True, slots=True)
class Drain:
    """An agent taken out of service: by an operator (its service instances move away,
    its other tasks may run until `deadline`), or by a rebalance (`rebalance`: its id),
    which moves the instances itself, wave by wave."""

    started_at: float
    deadline: float | None = None
    rebalance: str | None = None
    user: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "deadline": self.deadline,
            "rebalance": self.rebalance,
            "user": self.user,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any] | None) -> Drain | None:
        if not data:
            return None
        return Drain(
            started_at=float(data["started_at"]),
            deadline=data.get("deadline"),
            rebalance=data.get("rebalance"),
            user=data.get("user"),
        )


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    hostname: str
    resources: Resources
    attributes: Mapping[str, str]
    state: AgentState
    registered_at: float
    http_url: str | None = None
    # Wall-clock time of the last heartbeat; liveness itself runs on the monotonic clock.
    last_seen_at: float | None = None
    isolation: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None
    # The agent's container runtime as it registered it, e.g. {"runtime": "runc 1.1.5",
    # "bridge": true, "privileged": false}; None when it runs plain commands only.
    containers: Mapping[str, Any] | None = None
    drain: Drain | None = None

    def with_changes(self, **changes: Any) -> Agent:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hostname": self.hostname,
            "resources": self.resources.to_json(),
            "attributes": dict(self.attributes),
            "state": self.state.value,
            "registered_at": self.registered_at,
            "http_url": self.http_url,
            "last_seen_at": self.last_seen_at,
            "isolation": dict(self.isolation),
            "version": self.version,
            "containers": dict(self.containers) if self.containers is not None else None,
            "drain": self.drain.to_json() if self.drain is not None else None,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Agent:
        return Agent(
            id=data["id"],
            hostname=data["hostname"],
            resources=Resources.from_json(data["resources"]),
            attributes=dict(data.get("attributes", {})),
            state=AgentState(data["state"]),
            registered_at=data["registered_at"],
            http_url=data.get("http_url"),
            last_seen_at=data.get("last_seen_at"),
            isolation=dict(data.get("isolation", {})),
            version=data.get("version"),
            containers=registered_containers(data.get("containers")),
            drain=Drain.from_json(data.get("drain")),
        )

    def capabilities(self) -> frozenset[str]:
        """What placement may rely on this agent for: "containers", "containers.bridge",
        "containers.privileged" (see `container_needs`)."""
        if self.containers is None:
            return frozenset()
        found = {CONTAINERS}
        if self.containers.get("bridge") is True:
            found.add(CONTAINERS_BRIDGE)
        if self.containers.get("privileged") is True:
            found.add(CONTAINERS_PRIVILEGED)
        return frozenset(found)


CONTAINERS = "containers"
CONTAINERS_BRIDGE = "containers.bridge"
CONTAINERS_PRIVILEGED = "containers.privileged"


def container_needs(container: ContainerSpec | None) -> frozenset[str]:
    """The agent capabilities a task with this container needs."""
    if container is None:
        return frozenset()
    needs = {CONTAINERS}
    if container.bridged:
        needs.add(CONTAINERS_BRIDGE)
    if container.privileged:
        needs.add(CONTAINERS_PRIVILEGED)
    return frozenset(needs)


def registered_containers(value: object) -> Mapping[str, Any] | None:
    """The registration's `containers`: an object, or None (absent, null or malformed:
    an agent that says nothing clear about a runtime gets no container tasks)."""
    return dict(value) if isinstance(value, Mapping) else None
