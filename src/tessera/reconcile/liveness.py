"""Pure rules for agent liveness: who has been silent for too long, and whether so many
agents are out of contact at once that replacing their tasks should wait."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Out-of-contact agents that never throttle, whatever the fraction: a small cluster that
# loses one or two machines replaces their tasks (Kubernetes' node lifecycle controller
# has the same floor before it calls a zone partially disrupted).
THROTTLE_FLOOR = 2
# An agent unreachable for longer than this no longer counts for the throttle, neither as
# out nor in the total: a machine gone for good must not hold replacement back forever (a
# cluster that lost its fifth machine over the months would never replace anything
# again), and after ten minutes, as long as Marathon's default expunge, an outage is
# treated as permanent.
THROTTLE_MEMORY_SECONDS = 600.0


def silent_agents(last_seen: Mapping[str, float], now: float, timeout: float) -> list[str]:
    """Agent IDs whose last sign of life (monotonic seconds) is older than `timeout`."""
    return sorted(agent_id for agent_id, seen in last_seen.items() if now - seen > timeout)


def recently_lost(
    unreachable_last_seen: Mapping[str, float | None], now: float, memory: float
) -> list[str]:
    """Unreachable agents last heard from (wall seconds) less than `memory` ago; one with
    no such time counts as recent."""
    return sorted(
        agent_id
        for agent_id, seen in unreachable_last_seen.items()
        if seen is None or now - seen < memory
    )


@dataclass(frozen=True, slots=True)
class Outage:
    """How many of the cluster's agents are out of contact right now, and how many of
    those are marked unreachable already."""

    out: int
    total: int
    marked: int = 0

    @property
    def fraction(self) -> float:
        return self.out / self.total if self.total else 0.0


def outage(
    unreachable: Iterable[str],
    reachable_last_seen: Mapping[str, float],
    now: float,
    overdue_after: float,
) -> Outage:
    """Agents marked unreachable, plus reachable ones already silent for `overdue_after`
    (they missed a heartbeat). Heartbeats are spread over an interval, so agents cut off
    together cross the liveness timeout up to one interval apart; counting the overdue
    ones sees the whole outage when its first agent is marked, not only that agent."""
    marked = set(unreachable)
    overdue = {
        agent_id
        for agent_id, seen in reachable_last_seen.items()
        if agent_id not in marked and now - seen > overdue_after
    }
    total = len(marked | set(reachable_last_seen))
    return Outage(len(marked) + len(overdue), total, len(marked))


def replacement_throttled(current: Outage, fraction: float) -> bool:
    """Whether more than `fraction` of the agents (and more than THROTTLE_FLOOR of them)
    are out of contact: then the likelier cause is the network or the master's side, and
    replacing every task at once would only overload the rest of the cluster. Only once
    an agent is marked unreachable: before that there is nothing to replace, and a master
    that stalled for a moment (every agent overdue) should not cry wolf."""
    if current.marked == 0:
        return False
    return current.out > THROTTLE_FLOOR and current.out > fraction * current.total
