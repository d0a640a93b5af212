"""The cluster as numpy columns, built once from agent descriptions and updated in place."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np

from tessera.model.agent import AgentState
from tessera.model.resources import Resources
from tessera.placement.attributes import AttributeColumn
from tessera.placement.ports import PortTable
from tessera.placement.tasks import AppCounts, RunningTask, TaskTable
from tessera.placement.types import EPSILON, RESOURCE_NAMES, BoolArray, FloatArray, IntArray

UNRESERVED = "*"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AgentDescription:
    """One agent as the builder takes it.

    `used` is what is held by anything not listed in `tasks`; the resources and ports of
    `tasks` are subtracted as well. `role` reserves the whole agent for one role ("*": none).
    """

    id: str
    hostname: str
    resources: Resources
    attributes: Mapping[str, str] = field(default_factory=dict)
    used: Resources = field(default_factory=Resources)
    used_ports: tuple[int, ...] = ()
    tasks: tuple[RunningTask, ...] = ()
    state: AgentState = AgentState.ACTIVE
    role: str = UNRESERVED
    # What the agent can run beyond plain commands, e.g. "containers" (see Request.needs).
    capabilities: frozenset[str] = frozenset()


def _vector(resources: Resources) -> list[float]:
    scalars = resources.scalars()
    return [scalars[name] for name in RESOURCE_NAMES]


class Snapshot:
    """Agents in rows. `free` and `total` are (n_agents, 4) in (cpus, mem, disk, gpus) order.

    `place()` mutates the snapshot as its plan grows, so consecutive calls see each
    other's placements without rebuilding anything. Preemption only evicts tasks the
    snapshot knows as running (from the descriptions or `add_task`), never planned ones.
    """

    def __init__(self, agents: Iterable[AgentDescription]) -> None:
        described = list(agents)
        self.agent_ids = [agent.id for agent in described]
        self.index = {agent_id: row for row, agent_id in enumerate(self.agent_ids)}
        if len(self.index) != len(described):
            raise ValueError("snapshot: agent ids must be unique")
        self.total: FloatArray = np.array(
            [_vector(a.resources) for a in described], dtype=np.float64
        ).reshape(len(described), len(RESOURCE_NAMES))
        self.free: FloatArray = self.total - np.array(
            [_vector(a.used) for a in described], dtype=np.float64
        ).reshape(self.total.shape)
        self.active: BoolArray = np.array(
            [a.state is AgentState.ACTIVE for a in described], dtype=np.bool_
        )
        self.roles = AttributeColumn([a.role for a in described])
        self.capabilities = [a.capabilities for a in described]
        self.attributes = self._encode_attributes(described)
        self.ports = PortTable(
            [a.resources.ports for a in described], [a.used_ports for a in described]
        )
        self.apps = AppCounts(len(described))
        self.tasks = TaskTable()
        self.role_allocated: dict[str, FloatArray] = {}
        self._missing: dict[str, AttributeColumn] = {}
        self.cache: dict[object, object] = {}
        # Bumped on every change to an agent, so derived per-agent values refresh only there.
        self.version = 0
        self.row_version: IntArray = np.zeros(len(described), dtype=np.int64)
        self._total_capacity: FloatArray = self.total[self.active].sum(axis=0)
        for row, agent in enumerate(described):
            for task in agent.tasks:
                self.add_task(row, task)

    @classmethod
    def build(cls, agents: Iterable[AgentDescription]) -> Snapshot:
        return cls(agents)

    def copy(self) -> Snapshot:
        """An independent copy of what placing changes (free room, ports, app counts, the
        task table, role shares); what never changes after build is shared. Caches start
        empty."""
        other = object.__new__(Snapshot)
        other.__dict__.update(self.__dict__)
        other.free = self.free.copy()
        other.row_version = self.row_version.copy()
        other.ports = self.ports.copy()
        other.apps = self.apps.copy()
        other.tasks = self.tasks.copy()
        other.role_allocated = {role: share.copy() for role, share in self.role_allocated.items()}
        other._missing = dict(self._missing)
        other.cache = {}
        return other

    @staticmethod
    def _encode_attributes(agents: list[AgentDescription]) -> dict[str, AttributeColumn]:
        names = sorted({name for agent in agents for name in agent.attributes} - {"hostname"})
        columns = {
            name: AttributeColumn([a.attributes.get(name) for a in agents]) for name in names
        }
        columns["hostname"] = AttributeColumn([a.hostname for a in agents])
        return columns

    @property
    def n_agents(self) -> int:
        return len(self.agent_ids)

    def in_use(self) -> BoolArray:
        """Agents something runs on (or is planned for): some resource is taken."""
        return np.asarray((self.free < self.total - EPSILON).any(axis=1), dtype=np.bool_)

    def total_capacity(self) -> FloatArray:
        """Summed resources of the agents that can take work (the DRF denominator)."""
        return self._total_capacity

    def attribute(self, name: str) -> AttributeColumn:
        """The column for an attribute; one no agent has is all MISSING."""
        column = self.attributes.get(name)
        if column is None:
            column = self._missing.get(name)
            if column is None:
                column = self._missing[name] = AttributeColumn([None] * self.n_agents)
        return column

    def cached(self, key: object, compute: Callable[[], _T]) -> _T:
        """Memoise something derived from columns that never change (states, attributes)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return cast(_T, self.cache[key])

    def allocated(self, role: str) -> FloatArray:
        """Resources held by the role's running and planned tasks."""
        allocated = self.role_allocated.get(role)
        if allocated is None:
            allocated = self.role_allocated[role] = np.zeros(len(RESOURCE_NAMES))
        return allocated

    def touch(self, row: int) -> None:
        self.version += 1
        self.row_version[row] = self.version

    def add_task(self, row: int, task: RunningTask) -> None:
        """Record a running task: its resources, ports, app count and role share."""
        self.touch(row)
        demand = task.demand()
        self.free[row] -= demand
        self._take_ports(row, task.ports)
        self.apps.add(task.app_id, row, 1)
        self.allocated(task.role)[:] += demand
        self.tasks.add(row, task)

    def _take_ports(self, row: int, ports: tuple[int, ...]) -> None:
        columns = self.ports.free.shape[1]
        base = self.ports.base
        held = sorted(
            {p for p in ports if 0 <= p - base < columns and self.ports.free[row, p - base]}
        )
        if held:
            self.ports.take(row, held, 0)

    def commit(self, row: int, app_id: str, role: str, demand: FloatArray, copies: int) -> None:
        """Charge `copies` tasks of an app to agent `row` (ports are taken separately)."""
        self.touch(row)
        self.free[row] -= demand * copies
        self.apps.add(app_id, row, copies)
        self.allocated(role)[:] += demand * copies

    def evict(self, index: int) -> RunningTask:
        """Remove running task `index` of the task table, returning what it held."""
        task = self.tasks.tasks[index]
        row = self.tasks.agent[index]
        self.touch(row)
        demand = task.demand()
        self.free[row] += demand
        self.ports.release(row, task.ports)
        self.apps.add(task.app_id, row, -1)
        self.allocated(task.role)[:] -= demand
        self.tasks.remove(index)
        return task
