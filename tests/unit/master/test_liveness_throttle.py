"""Lost agents in-process, with a fake clock: the liveness controller marks an outage in one
write, and the services controller turns the replacement throttle on and off with events."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tessera.master.config import MasterConfig
from tessera.master.controllers.services import THROTTLE_EVENT, ServicesController
from tessera.master.core import Master
from tessera.master.events import EventBus
from tessera.model.agent import Agent, AgentState
from tessera.model.resources import Resources
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.reconcile.liveness import Outage
from tessera.store import Delete, MemoryStore, Put
from tessera.testing.clock import FakeClock


def _master(tmp_path: Path, agents: int) -> tuple[Master, FakeClock]:
    clock = FakeClock(wall=1_000_000.0)
    config = MasterConfig(work_dir=tmp_path, heartbeat_interval=1.0, max_missed_heartbeats=3)
    master = Master(config, store=MemoryStore(), clock=clock)
    for n in range(agents):
        master.state.agents[f"a{n}"] = Agent(
            id=f"a{n}",
            hostname=f"h{n}",
            resources=Resources(cpus=1, mem=1024),
            attributes={},
            state=AgentState.ACTIVE,
            registered_at=clock.wall(),
        )
        master.channel._last_heard[f"a{n}"] = clock.monotonic()
    return master, clock


async def test_agents_silent_together_are_marked_in_one_write(tmp_path: Path) -> None:
    master, clock = _master(tmp_path, 4)
    task = Task(
        "t.1", TaskSpec(name="t"), TaskState.TASK_RUNNING, 0.0, 0.0, agent_id="a0", hostname="h0"
    )
    await master.state.save(tasks=[task])
    clock.advance(2.0)
    for n in (2, 3):
        master.channel._last_heard[f"a{n}"] = clock.monotonic()
    clock.advance(1.5)  # a0 and a1 silent for 3.5 s > 3 s; a2 and a3 for 1.5 s
    commits: list[int] = []
    commit = master.store.commit

    async def counting(
        operations: Sequence[Put | Delete], *, expect_revision: int | None = None
    ) -> int:
        commits.append(len(operations))
        return await commit(operations, expect_revision=expect_revision)

    master.store.commit = counting  # type: ignore[method-assign]
    assert await master.liveness.check() == ["a0", "a1"]
    assert commits == [3]  # one task, two agents
    states = {a.id: a.state for a in master.state.agents.values()}
    assert states == {
        "a0": AgentState.UNREACHABLE,
        "a1": AgentState.UNREACHABLE,
        "a2": AgentState.ACTIVE,
        "a3": AgentState.ACTIVE,
    }
    assert master.state.tasks["t.1"].state is TaskState.TASK_UNREACHABLE
    # Their last heartbeat, in wall time.
    assert master.state.agents["a0"].last_seen_at == clock.wall() - 3.5


async def test_throttle_event_when_replacement_stops_and_resumes(tmp_path: Path) -> None:
    master, clock = _master(tmp_path, 5)
    events = EventBus()
    watched = events.subscribe([THROTTLE_EVENT])
    services = ServicesController(master, events)

    def mark(*agent_ids: str, state: AgentState) -> None:
        for agent_id in agent_ids:
            agent = master.state.agents[agent_id]
            master.state.agents[agent_id] = agent.with_changes(state=state)
            master.channel._last_heard[agent_id] = clock.monotonic()

    mark("a0", "a1", state=AgentState.UNREACHABLE)
    services._update_throttle(clock.wall())
    assert not services.throttled and watched.queue.empty()  # 2 of 5: the floor

    clock.advance(1.0)
    for agent_id in ("a3", "a4"):
        master.channel._last_heard[agent_id] = clock.monotonic()
    clock.advance(1.0)  # a2 has missed a heartbeat and a half: out of contact too
    services._update_throttle(clock.wall())
    assert services.throttled
    stopped = watched.queue.get_nowait()
    assert (stopped["throttled"], stopped["unreachableAgents"], stopped["totalAgents"]) == (
        True,
        3,
        5,
    )
    assert stopped["threshold"] == 0.4 and stopped["eventType"] == THROTTLE_EVENT

    services._update_throttle(clock.wall())
    assert watched.queue.empty()  # no news, no event

    mark("a1", "a2", state=AgentState.ACTIVE)
    services._update_throttle(clock.wall())
    resumed = watched.queue.get_nowait()
    assert (resumed["throttled"], resumed["unreachableAgents"]) == (False, 1)
    assert not services.throttled


async def test_agents_gone_for_ten_minutes_no_longer_throttle(tmp_path: Path) -> None:
    master, clock = _master(tmp_path, 5)
    services = ServicesController(master, EventBus())
    for agent_id in ("a0", "a1", "a2"):
        agent = master.state.agents[agent_id]
        master.state.agents[agent_id] = agent.with_changes(
            state=AgentState.UNREACHABLE, last_seen_at=clock.wall()
        )
    services._update_throttle(clock.wall())
    assert services.throttled
    clock.advance(601.0)
    for agent_id in ("a3", "a4"):
        master.channel._last_heard[agent_id] = clock.monotonic()
    services._update_throttle(clock.wall())
    assert not services.throttled and services.outage() == Outage(0, 2, 0)
