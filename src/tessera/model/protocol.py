"""The agent protocol: JSON messages on the agent-initiated WebSocket stream.

agent -> master: register (with the tasks it still knows), heartbeat, status (with a UUID),
renew (a PEM certificate request, at 2/3 of the client certificate's life).
master -> agent: registered, launch (with its secrets' values, see LaunchSecrets), kill,
ack (of a status UUID), reconcile, certificate (the renewed one), renewal-refused.

The stream runs over mutual TLS on the master's agent port (`tessera master --agent-port`);
the agent id is the one in the agent's certificate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.model.secret_refs import SecretUse
from tessera.model.task import TaskState

AGENT_STREAM_PATH = "/v1/agent/stream"

# WebSocket close codes in the private range, so the agent can tell the operator why.
CLOSE_BAD_TOKEN = 4401
CLOSE_DUPLICATE_AGENT = 4409
CLOSE_PROTOCOL_ERROR = 4400
CLOSE_UNREACHABLE = 4408
# The agent's certificate was revoked: it must not reconnect (nor retry).
CLOSE_REVOKED = 4403
# RFC 6455 policy violation: a certificate for one agent registering as another, or expired.
CLOSE_POLICY = 1008
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


@dataclass(frozen=True, slots=True, repr=False)
class LaunchSecrets:
    """The secret values that come with one launch message (`"secrets": [{"env": NAME |
    "file": path, "value": text}]`): held in memory for the launch, never checkpointed.
    Its repr names the variables and files only, so a stray log line shows no value."""

    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"LaunchSecrets(env={sorted(self.env)}, files={sorted(self.files)})"

    @staticmethod
    def from_json(entries: object) -> LaunchSecrets:
        env: dict[str, str] = {}
        files: dict[str, str] = {}
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("value"), str):
                continue
            if isinstance(entry.get("env"), str):
                env[entry["env"]] = entry["value"]
            elif isinstance(entry.get("file"), str):
                files[entry["file"]] = entry["value"]
        return LaunchSecrets(env, files)

    def missing(self, uses: Sequence[SecretUse]) -> list[str]:
        """The variables and files a task needs that this launch did not bring."""
        return [
            use.env or str(use.file)
            for use in uses
            if (use.env is not None and use.env not in self.env)
            or (use.file is not None and use.file not in self.files)
        ]

    def only(self, uses: Sequence[SecretUse]) -> LaunchSecrets:
        """What the task's spec asks for, and nothing else a message might carry."""
        wanted_env = {use.env for use in uses if use.env is not None}
        wanted_files = {use.file for use in uses if use.file is not None}
        return LaunchSecrets(
            {k: v for k, v in self.env.items() if k in wanted_env},
            {k: v for k, v in self.files.items() if k in wanted_files},
        )
