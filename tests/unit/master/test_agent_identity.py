"""The agent channel trusts the certificate's agent id, not the registration's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import WebSocketDisconnect

from tessera.clock import SystemClock
from tessera.master.agent_channel import AgentChannel, PeerIdentity
from tessera.master.config import MasterConfig
from tessera.master.state import ClusterState
from tessera.store import MemoryStore


class FakeLink:
    def __init__(self, messages: list[dict[str, object]]) -> None:
        self.incoming = [json.dumps(m) for m in messages]
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def receive_text(self) -> str:
        if not self.incoming:
            raise WebSocketDisconnect(1000)
        return self.incoming.pop(0)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)


def _register(agent_id: str) -> dict[str, object]:
    return {
        "type": "register",
        "agent_id": agent_id,
        "hostname": "h",
        "resources": {"cpus": 1, "mem": 128, "disk": 0},
    }


def _channel(tmp_path: Path, audited: list[str]) -> AgentChannel:
    channel = AgentChannel(
        ClusterState(MemoryStore()),
        MasterConfig(work_dir=tmp_path),
        SystemClock(),
        lambda: None,
    )

    async def audit(agent_id: str, summary: str) -> None:
        audited.append(summary)

    channel.audit = audit
    return channel


def test_a_certificate_for_one_agent_cannot_register_another(tmp_path: Path) -> None:
    audited: list[str] = []
    channel = _channel(tmp_path, audited)
    link = FakeLink([_register("agent-2")])
    peer = PeerIdentity("agent-1", 1, 4e9)
    asyncio.run(channel.serve(link, peer))
    assert link.closed is not None and link.closed[0] == 1008
    assert audited == ["agent agent-1 tried to register as agent agent-2"]
    assert channel.state.agents == {}


def test_its_own_id_registers(tmp_path: Path) -> None:
    channel = _channel(tmp_path, [])
    link = FakeLink([_register("agent-1")])
    asyncio.run(channel.serve(link, PeerIdentity("agent-1", 1, 4e9)))
    assert "agent-1" in channel.state.agents
    assert json.loads(link.sent[0])["type"] == "registered"


def test_an_expired_certificate_ends_the_session(tmp_path: Path) -> None:
    channel = _channel(tmp_path, [])
    link = FakeLink([_register("agent-1"), {"type": "heartbeat"}])
    asyncio.run(channel.serve(link, PeerIdentity("agent-1", 1, 1.0)))
    assert link.closed == (1008, "the agent certificate has expired")
