"""Quotas: their JSON, what a role consumes as its tasks come and go, and their store."""

from __future__ import annotations

import asyncio

from tessera.master.quotas import QUOTAS, Ledger, Quota, Quotas, Usage, usage_of
from tessera.master.state import ClusterState
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.store import MemoryStore


def _task(
    task_id: str,
    state: TaskState,
    role: str = "team-a",
    app: str | None = "/team-a/web",
    cpus: float = 0.1,
) -> Task:
    spec = TaskSpec(name="t", cmd="x", cpus=cpus, mem=64, disk=10, gpus=1, app_id=app, role=role)
    return Task(task_id, spec, state, 0.0, 0.0, agent_id="a1")


def test_a_quota_names_only_the_limits_it_sets() -> None:
    quota = Quota("team-a", cpus=10, mem=20480, instances=5)
    assert quota.limits() == {"cpus": 10, "mem": 20480, "instances": 5}
    assert quota.resource_limits() == {"cpus": 10, "mem": 20480}
    assert quota.counts_limited()
    assert not Quota("team-a", gpus=0).counts_limited()
    assert Quota.from_json(quota.to_json()) == quota


def test_the_ledger_follows_tasks_in_and_out_of_active_states() -> None:
    ledger = Ledger()
    queued = _task("t1", TaskState.TASK_QUEUED)
    running = queued.with_changes(state=TaskState.TASK_RUNNING)
    ledger.apply(None, queued)
    assert ledger.usage("team-a") == Usage()
    ledger.apply(queued, running)
    ledger.apply(None, _task("t2", TaskState.TASK_STAGING, app="/team-a/api", cpus=0.2))
    usage = ledger.usage("team-a")
    assert usage.to_json() == {
        "cpus": 0.3,
        "mem": 128,
        "disk": 20,
        "gpus": 2,
        "instances": 2,
        "apps": 2,
    }
    ledger.apply(running, running.with_changes(state=TaskState.TASK_FINISHED))
    assert ledger.usage("team-a").app_ids == frozenset({"/team-a/api"})
    assert ledger.usage("team-b") == Usage()


def test_native_tasks_count_as_instances_but_not_as_apps() -> None:
    tasks = [_task("n1", TaskState.TASK_RUNNING, app=None), _task("x", TaskState.TASK_RUNNING)]
    usage = usage_of(tasks, "team-a")
    assert (usage.instances, usage.apps) == (2, 1)


def test_quotas_are_durable_and_reloaded_with_the_consumption() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        state = ClusterState(store)
        woken: list[int] = []
        quotas = Quotas(store, state, on_change=lambda: woken.append(1))
        await quotas.start()
        await quotas.put(Quota("team-a", cpus=1))
        assert woken == [1]
        assert (await store.load(QUOTAS)) == {"team-a": {"role": "team-a", "cpus": 1}}
        await state.save(tasks=[_task("t1", TaskState.TASK_RUNNING)])
        assert quotas.usage("team-a").instances == 1
        again = Quotas(store, state)
        await again.start()
        assert again.get("team-a") == Quota("team-a", cpus=1)
        assert again.usage("team-a").instances == 1
        assert await again.remove("team-a")
        assert not await again.remove("team-a")
        assert again.all() == [] and dict(again.limits()) == {}

    asyncio.run(scenario())
