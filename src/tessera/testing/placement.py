"""Fakes for unit tests of the master's placement call (master/placement_adapter.py)."""

from __future__ import annotations

from collections.abc import Mapping

from tessera.master.quotas import Ledger, Quota, Usage
from tessera.model.agent import Agent, AgentState
from tessera.model.resources import Resources
from tessera.model.task import Task


class FakeQuotas:
    """The roles' quotas and what `running` tasks consume (master.quotas.Quotas's reads)."""

    def __init__(self, *quotas: Quota, running: tuple[Task, ...] = ()) -> None:
        self.quotas = {q.role: q for q in quotas}
        self.ledger = Ledger()
        self.ledger.reset(running)

    def limits(self) -> Mapping[str, Quota]:
        return self.quotas

    def usage(self, role: str) -> Usage:
        return self.ledger.usage(role)


def active_agent(agent_id: str, cpus: float = 4) -> Agent:
    return Agent(
        id=agent_id,
        hostname=f"{agent_id}.local",
        resources=Resources(cpus=cpus, mem=4096),
        attributes={},
        state=AgentState.ACTIVE,
        registered_at=0.0,
    )
