"""The master's view of the cluster: in memory for reads, written through to the store.

The master process is the single writer. A change is applied to memory at once (so that
concurrent handlers always see the latest state and never overwrite each other with stale
copies) and the caller awaits its durable commit before acknowledging anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tessera.model.agent import Agent
from tessera.model.task import Task, TaskState
from tessera.store import Put, StateStore

TaskListener = Callable[[Task | None, Task], None]

AGENTS = "agents"
TASKS = "tasks"


class ClusterState:
    def __init__(self, store: StateStore, max_batch: int | None = None) -> None:
        self.store = store
        # The most operations the store takes in one commit (etcd's --max-txn-ops); a
        # larger change (a big placement pass, an agent with many tasks going silent) is
        # committed in parts. Each task or agent is its own record, so a part that is
        # durable without the next is still a consistent state, as after a failed commit.
        self.max_batch = max_batch
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, Task] = {}
        self._tasks_by_agent: dict[str, set[str]] = {}
        # Queued task IDs in arrival order (dicts keep insertion order).
        self._queued: dict[str, None] = {}
        # Bumped whenever resources are released or an agent changes: a placement snapshot
        # built at an older generation no longer matches the cluster. (Placing tasks only
        # takes resources, and the planner's own snapshot already holds what it placed.)
        self.generation = 0
        self._listeners: list[TaskListener] = []

    def subscribe(self, listener: TaskListener) -> None:
        """Call `listener(previous, task)` after every task change is applied in memory.

        Listeners run synchronously and must not block; controllers use them to wake their
        reconcile loops (level-based: they re-read the state, never trust event order)."""
        self._listeners.append(listener)

    async def load(self) -> None:
        for data in (await self.store.load(AGENTS)).values():
            agent = Agent.from_json(data)
            self.agents[agent.id] = agent
        for data in (await self.store.load(TASKS)).values():
            self._index(Task.from_json(data))

    async def save(self, tasks: Iterable[Task] = (), agents: Iterable[Agent] = ()) -> None:
        """Apply to memory now; return once the store has made the change durable."""
        operations: list[Put] = []
        for task in tasks:
            previous = self._index(task)
            for listener in self._listeners:
                listener(previous, task)
            operations.append(Put(TASKS, task.id, task.to_json()))
        for agent in agents:
            self.agents[agent.id] = agent
            self.generation += 1
            operations.append(Put(AGENTS, agent.id, agent.to_json()))
        if not operations:
            return
        size = self.max_batch or len(operations)
        for start in range(0, len(operations), size):
            await self.store.commit(operations[start : start + size])

    def _index(self, task: Task) -> Task | None:
        previous = self.tasks.get(task.id)
        if previous is not None and previous.agent_id and previous.agent_id != task.agent_id:
            self._tasks_by_agent.get(previous.agent_id, set()).discard(task.id)
        if (
            previous is not None
            and previous.state.active
            and not (task.state.active and task.agent_id == previous.agent_id)
        ):
            self.generation += 1
        self.tasks[task.id] = task
        if task.state is TaskState.TASK_QUEUED:
            self._queued[task.id] = None
        else:
            self._queued.pop(task.id, None)
        if task.agent_id:
            self._tasks_by_agent.setdefault(task.agent_id, set()).add(task.id)
        return previous

    def tasks_on(self, agent_id: str) -> list[Task]:
        return [self.tasks[task_id] for task_id in self._tasks_by_agent.get(agent_id, ())]

    def active_tasks_on(self, agent_id: str) -> list[Task]:
        return [task for task in self.tasks_on(agent_id) if task.state.active]

    def queued_tasks(self) -> list[Task]:
        return [self.tasks[task_id] for task_id in self._queued]
