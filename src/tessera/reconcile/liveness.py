"""Pure rule for agent liveness: who has been silent for longer than allowed."""

from __future__ import annotations

from collections.abc import Mapping


def silent_agents(last_seen: Mapping[str, float], now: float, timeout: float) -> list[str]:
    """Agent IDs whose last sign of life (monotonic seconds) is older than `timeout`."""
    return sorted(agent_id for agent_id, seen in last_seen.items() if now - seen > timeout)
