"""The agent protocol: JSON messages on the agent-initiated WebSocket stream.

agent -> master: register (with the tasks it still knows), heartbeat, status (with a UUID).
master -> agent: registered, launch, kill, ack (of a status UUID), reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.model.task import TaskState

AGENT_STREAM_PATH = "/v1/agent/stream"

# WebSocket close codes in the private range, so the agent can tell the operator why.
CLOSE_BAD_TOKEN = 4401
CLOSE_DUPLICATE_AGENT = 4409
CLOSE_PROTOCOL_ERROR = 4400
CLOSE_UNREACHABLE = 4408
# This master does not lead; the reason names the leader. The agent dials its next master.
CLOSE_NOT_LEADER = 4307


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    uuid: str
    task_id: str
    state: TaskState
    timestamp: float
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    # Set on updates the agent sends when a task's health or readiness changes.
    healthy: bool | None = None
    ready: bool | None = None
    # The container's addresses on its bridge, sent with TASK_RUNNING of bridged containers.
    ip_addresses: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "status",
            "uuid": self.uuid,
            "task_id": self.task_id,
            "state": self.state.value,
            "timestamp": self.timestamp,
            "reason": self.reason,
            "message": self.message,
            "exit_code": self.exit_code,
            "healthy": self.healthy,
            "ready": self.ready,
            "ip_addresses": list(self.ip_addresses),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> StatusUpdate:
        return StatusUpdate(
            uuid=str(data["uuid"]),
            task_id=str(data["task_id"]),
            state=TaskState(data["state"]),
            timestamp=float(data["timestamp"]),
            reason=data.get("reason"),
            message=data.get("message"),
            exit_code=data.get("exit_code"),
            healthy=data.get("healthy"),
            ready=data.get("ready"),
            ip_addresses=tuple(str(a) for a in data.get("ip_addresses") or ()),
        )
