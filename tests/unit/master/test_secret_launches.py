"""The agent channel's launches of tasks with secrets: values in the message, order kept,
and a task whose secrets cannot be delivered fails instead of starting without them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tessera.master.agent_channel import AgentChannel, Deferred
from tessera.master.config import MasterConfig
from tessera.master.secrets import SecretStore
from tessera.master.state import ClusterState
from tessera.model.secret_refs import SecretUse
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.store.memory import MemoryStore
from tessera.testing.clock import FakeClock

KEK = bytes(range(32))


class FakeSession:
    def __init__(self) -> None:
        self.outbox: list[dict[str, Any] | Deferred] = []

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.append(message)

    def send_deferred(self, build: Deferred) -> None:
        self.outbox.append(build)

    async def sent(self) -> list[dict[str, Any]]:
        messages = []
        for item in self.outbox:
            message = item if isinstance(item, dict) else await item()
            if message is not None:
                messages.append(message)
        return messages


def _task(*uses: SecretUse) -> Task:
    spec = TaskSpec(name="web", cmd="true", app_id="/team-a/web", secrets=uses)
    return Task(
        id="team-a_web.1",
        spec=spec,
        state=TaskState.TASK_STAGING,
        created_at=0,
        updated_at=0,
        agent_id="a1",
    )


def _setup(tmp_path: Path) -> tuple[AgentChannel, FakeSession, SecretStore, ClusterState]:
    store = MemoryStore()
    state = ClusterState(store)
    channel = AgentChannel(state, MasterConfig(work_dir=tmp_path), FakeClock(), lambda: None)
    session = FakeSession()
    channel.sessions["a1"] = session  # type: ignore[assignment]
    secrets = SecretStore(store, lambda: KEK)
    channel.resolve_secrets = secrets.deliver
    return channel, session, secrets, state


def test_values_travel_in_the_launch_and_a_kill_never_overtakes_it(tmp_path: Path) -> None:
    channel, session, secrets, state = _setup(tmp_path)

    async def scenario() -> None:
        await secrets.create("/team-a/db", b"v4lue", "admin")
        task = _task(SecretUse("/team-a/db", env="DB"), SecretUse("/team-a/db", file="f"))
        await state.save(tasks=[task])
        assert channel.send_launch(task)
        channel.send_kill(task)
        launch, kill = await session.sent()
        assert launch["type"] == "launch" and kill["type"] == "kill"
        assert launch["secrets"] == [
            {"env": "DB", "value": "v4lue"},
            {"file": "f", "value": "v4lue"},
        ]
        assert "v4lue" not in str(launch["task"])

    asyncio.run(scenario())


def test_undeliverable_secrets_fail_the_task(tmp_path: Path) -> None:
    channel, session, _, state = _setup(tmp_path)

    async def scenario() -> None:
        task = _task(SecretUse("/team-a/gone", env="DB"))
        await state.save(tasks=[task])
        channel.send_launch(task)
        assert await session.sent() == []
        failed = state.tasks[task.id]
        assert failed.state is TaskState.TASK_FAILED
        assert "/team-a/gone" in (failed.message or "")

    asyncio.run(scenario())


def test_tasks_without_secrets_launch_at_once(tmp_path: Path) -> None:
    channel, session, _, _ = _setup(tmp_path)
    channel.send_launch(_task())
    assert isinstance(session.outbox[0], dict) and "secrets" not in session.outbox[0]
