"""Team quotas: limits per role, kept in the master's store, and what each role consumes.

A quota limits a role (a team: `tessera team create team-a` makes the role `team-a`) in
resources (`cpus`, `mem`, `disk`, `gpus`: the sum over its tasks that hold resources on an
agent) and in counts (`instances`: such tasks; `apps`: distinct apps or jobs with such
tasks). A limit left out is unlimited. A quota also carries the role's `weight` in the
engine's weighted dominant-resource fairness. The placement engine enforces the resource limits
(placement/fairness.py); the placement adapter holds back the instances that would exceed a
count limit. Either way an instance over its quota stays queued with `QuotaExceeded`; the API
that asked for it has already answered.

What a role consumes is kept up to date from every task change (ClusterState listeners),
so reading it costs a dict lookup, not a pass over every task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tessera.master.state import ClusterState
from tessera.model.task import Task
from tessera.store import Delete, Put, StateStore

QUOTAS = "quotas"
RESOURCE_LIMITS = ("cpus", "mem", "disk", "gpus")
COUNT_LIMITS = ("instances", "apps")
LIMIT_NAMES = RESOURCE_LIMITS + COUNT_LIMITS
DEFAULT_ROLE = "*"


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits of one role; None: unlimited."""

    role: str
    cpus: float | None = None
    mem: float | None = None
    disk: float | None = None
    gpus: int | None = None
    instances: int | None = None
    apps: int | None = None
    # The role's weight in fair sharing (Mesos's role weights): a role of weight 2 gets twice
    # the dominant share of one of weight 1 when they compete. None: 1.
    weight: float | None = None

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        values = {name: getattr(self, name) for name in LIMIT_NAMES}
        return {name: value for name, value in values.items() if value is not None}

    def resource_limits(self) -> dict[str, float]:
        """What the placement engine enforces (Policy.role_quotas)."""
        return {name: v for name, v in self.limits().items() if name in RESOURCE_LIMITS}

    def counts_limited(self) -> bool:
        return self.instances is not None or self.apps is not None

    def to_json(self) -> dict[str, Any]:
        weight = {} if self.weight is None else {"weight": self.weight}
        return {"role": self.role, **self.limits(), **weight}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Quota:
        values = {name: data.get(name) for name in LIMIT_NAMES}
        weight = data.get("weight")
        return Quota(role=str(data["role"]), **values, weight=weight)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a role's tasks that hold resources on agents add up to."""

    cpus: float = 0.0
    mem: float = 0.0
    disk: float = 0.0
    gpus: int = 0
    instances: int = 0
    app_ids: frozenset[str] = frozenset()

    @property
    def apps(self) -> int:
        return len(self.app_ids)

    def to_json(self) -> dict[str, float]:
        # Sums of floats added and taken away drift by ulps; nobody asks for 1e-12 cpus.
        return {
            "cpus": round(self.cpus, 6),
            "mem": round(self.mem, 6),
            "disk": round(self.disk, 6),
            "gpus": self.gpus,
            "instances": self.instances,
            "apps": self.apps,
        }


def app_of(task: Task) -> str | None:
    """The app or job a task belongs to; a native one-off task belongs to none."""
    return task.spec.app_id


@dataclass(slots=True)
class _RoleTally:
    resources: list[float] = field(default_factory=lambda: [0.0] * len(RESOURCE_LIMITS))
    instances: int = 0
    apps: Counter[str] = field(default_factory=Counter)

    def add(self, task: Task, sign: int) -> None:
        spec = task.spec
        for index, amount in enumerate((spec.cpus, spec.mem, spec.disk, spec.gpus)):
            self.resources[index] += sign * amount
        self.instances += sign
        app = app_of(task)
        if app is not None:
            self.apps[app] += sign
            if self.apps[app] <= 0:
                del self.apps[app]

    def usage(self) -> Usage:
        cpus, mem, disk, gpus = self.resources
        return Usage(cpus, mem, disk, round(gpus), self.instances, frozenset(self.apps))


class Ledger:
    """Per role, what its active tasks hold; fed every task change, so always current."""

    def __init__(self) -> None:
        self._roles: dict[str, _RoleTally] = {}

    def reset(self, tasks: Iterable[Task]) -> None:
        self._roles = {}
        for task in tasks:
            self.apply(None, task)

    def apply(self, previous: Task | None, task: Task) -> None:
        """A ClusterState listener: `previous` is the task's record before this change."""
        if previous is not None and previous.state.active:
            self._tally(previous.spec.role).add(previous, -1)
        if task.state.active:
            self._tally(task.spec.role).add(task, +1)

    def _tally(self, role: str) -> _RoleTally:
        tally = self._roles.get(role)
        if tally is None:
            tally = self._roles[role] = _RoleTally()
        return tally

    def usage(self, role: str) -> Usage:
        tally = self._roles.get(role)
        return tally.usage() if tally is not None else Usage()


def usage_of(tasks: Iterable[Task], role: str) -> Usage:
    """What `role` consumes, computed from scratch (tests; the Ledger keeps it current)."""
    ledger = Ledger()
    ledger.reset(task for task in tasks if task.spec.role == role)
    return ledger.usage(role)


class Quotas:
    """The quotas of every role, durable in the store, and what each role consumes.

    A master component: `start()` loads the quotas once the cluster state is loaded. A
    change is durable before the call returns, and then calls `on_change` (the planner's
    wake-up: instances held back by a lower limit may place now)."""

    def __init__(
        self,
        store: StateStore,
        state: ClusterState,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.on_change = on_change
        self._quotas: dict[str, Quota] = {}
        # Rebuilt on change, never mutated, so the planner can keep the one it was handed.
        self._view: Mapping[str, Quota] = MappingProxyType({})
        self.ledger = Ledger()
        state.subscribe(self.ledger.apply)

    async def start(self) -> None:
        loaded = await self.store.load(QUOTAS)
        self._quotas = {role: Quota.from_json(data) for role, data in loaded.items()}
        self._refresh()
        self.ledger.reset(self.state.tasks.values())

    async def stop(self) -> None:
        return None

    def limits(self) -> Mapping[str, Quota]:
        """Every quota by role, read-only (what the placement adapter is given)."""
        return self._view

    def usage(self, role: str) -> Usage:
        return self.ledger.usage(role)

    def get(self, role: str) -> Quota | None:
        return self._quotas.get(role)

    def all(self) -> list[Quota]:
        return [self._quotas[role] for role in sorted(self._quotas)]

    async def put(self, quota: Quota) -> None:
        await self.store.commit([Put(QUOTAS, quota.role, quota.to_json())])
        self._quotas[quota.role] = quota
        self._changed()

    async def remove(self, role: str) -> bool:
        if role not in self._quotas:
            return False
        await self.store.commit([Delete(QUOTAS, role)])
        del self._quotas[role]
        self._changed()
        return True

    def _refresh(self) -> None:
        self._view = MappingProxyType(dict(self._quotas))

    def _changed(self) -> None:
        self._refresh()
        if self.on_change is not None:
            self.on_change()
