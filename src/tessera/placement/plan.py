"""What the engine answers: placements, unplaced tasks with reasons, and evictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Placement:
    """Instance `instance` of request `key` runs on `agent_id` with these host ports.

    `evicts`: the running tasks that must stop first to make room for it (preemption)."""

    key: str
    instance: int
    agent_id: str
    ports: tuple[int, ...] = ()
    evicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Unplaced:
    """`count` tasks of request `key` fit nowhere; `reasons` counts rejecting agents by reason.

    Each agent is counted once, under the first check it failed (the pipeline order).
    """

    key: str
    count: int
    reasons: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Eviction:
    """Running task `task_id` (app `app_id`) must stop to make room for request `for_key`."""

    task_id: str
    app_id: str
    agent_id: str
    priority: int
    for_key: str


@dataclass(frozen=True, slots=True)
class Plan:
    placements: tuple[Placement, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    evictions: tuple[Eviction, ...] = ()

    @property
    def placed_count(self) -> int:
        return len(self.placements)

    @property
    def unplaced_count(self) -> int:
        return sum(item.count for item in self.unplaced)

    def to_json(self) -> dict[str, Any]:
        return {
            "placements": [
                {"app": p.key, "instance": p.instance, "agent": p.agent_id, "ports": list(p.ports)}
                for p in self.placements
            ],
            "unplaced": [
                {"app": u.key, "count": u.count, "reasons": dict(u.reasons)} for u in self.unplaced
            ],
            "evictions": [
                {
                    "task": e.task_id,
                    "app": e.app_id,
                    "agent": e.agent_id,
                    "priority": e.priority,
                    "for": e.for_key,
                }
                for e in self.evictions
            ],
        }
