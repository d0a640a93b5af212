"""Running tasks the engine knows: per-app counts for constraints, a table for preemption."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tessera.model.resources import Resources
from tessera.placement.types import RESOURCE_NAMES, FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task already on an agent. Its resources and ports are counted as used."""

    task_id: str
    app_id: str
    resources: Resources = field(default_factory=Resources)
    ports: tuple[int, ...] = ()
    role: str = "*"
    priority: int = 0

    def demand(self) -> FloatArray:
        scalars = self.resources.scalars()
        return np.array([scalars[name] for name in RESOURCE_NAMES], dtype=np.float64)


class AppCounts:
    """How many tasks of each app run on each agent (running ones and those planned so far)."""

    __slots__ = ("_dense", "_n_agents", "_sparse")

    def __init__(self, n_agents: int) -> None:
        self._n_agents = n_agents
        self._sparse: dict[str, dict[int, int]] = {}
        self._dense: dict[str, IntArray] = {}

    def add(self, app_id: str, row: int, copies: int) -> None:
        per_agent = self._sparse.setdefault(app_id, {})
        per_agent[row] = per_agent.get(row, 0) + copies
        dense = self._dense.get(app_id)
        if dense is not None:
            dense[row] += copies

    def copy(self) -> AppCounts:
        other = AppCounts(self._n_agents)
        other._sparse = {app: dict(rows) for app, rows in self._sparse.items()}
        return other  # dense columns are rebuilt from the sparse counts when asked for

    def total(self, app_id: str) -> int:
        """Tasks of the app on all agents (without building its dense column)."""
        per_agent = self._sparse.get(app_id)
        return sum(per_agent.values()) if per_agent else 0

    def per_agent(self, app_id: str) -> IntArray:
        """Dense counts per agent; built on first use, then kept up to date."""
        dense = self._dense.get(app_id)
        if dense is None:
            dense = np.zeros(self._n_agents, dtype=np.int64)
            for row, copies in self._sparse.get(app_id, {}).items():
                dense[row] = copies
            self._dense[app_id] = dense
        return dense


class TaskTable:
    """Running tasks in rows, for choosing evictions; numpy columns are built on demand."""

    __slots__ = ("_columns", "agent", "alive", "tasks")

    def __init__(self) -> None:
        self.tasks: list[RunningTask] = []
        self.agent: list[int] = []
        self.alive: list[bool] = []
        self._columns: tuple[IntArray, IntArray, FloatArray] | None = None

    def add(self, row: int, task: RunningTask) -> None:
        self.tasks.append(task)
        self.agent.append(row)
        self.alive.append(True)
        self._columns = None

    def copy(self) -> TaskTable:
        other = TaskTable()
        other.tasks = list(self.tasks)
        other.agent = list(self.agent)
        other.alive = list(self.alive)
        return other

    def remove(self, index: int) -> None:
        self.alive[index] = False
        self._columns = None

    def columns(self) -> tuple[IntArray, IntArray, FloatArray]:
        """(agent row, priority, demand matrix) of live tasks; dead rows get agent -1."""
        if self._columns is None:
            agent = np.array(self.agent, dtype=np.int64)
            agent[~np.array(self.alive, dtype=np.bool_)] = -1
            priority = np.array([t.priority for t in self.tasks], dtype=np.int64)
            demand = np.array([t.demand() for t in self.tasks], dtype=np.float64)
            self._columns = (agent, priority, demand.reshape(len(self.tasks), len(RESOURCE_NAMES)))
        return self._columns
