"""Fault 1: `kill -9` the agent again and again while it runs tasks; the tasks never notice."""

from __future__ import annotations

import time
from pathlib import Path

from tessera.testing.cluster import Cluster, task_processes, wait_for

TASKS = 20
KILLS = 10


def _pids(task_ids: list[str]) -> dict[str, frozenset[int]]:
    return {task_id: frozenset(p.pid for p in task_processes(task_id)) for task_id in task_ids}


def _new_url(cluster: Cluster, old: str) -> str | None:
    agents = cluster.get("/v1/agents")["agents"]
    if agents[0]["state"] == "ACTIVE" and agents[0]["url"] != old:
        return str(agents[0]["url"])
    return None


def test_agent_kill9_ten_times_keeps_every_task(cluster: Cluster) -> None:
    agent = cluster.start_agent(resources="cpus:4;mem:4096;disk:100;ports:[31000-31099]")
    ids = [
        cluster.launch(name=f"t{i}", cmd="sleep 600", cpus=0.05, mem=16)["id"] for i in range(TASKS)
    ]
    for task_id in ids:
        cluster.wait_state(task_id, "TASK_RUNNING")

    def all_started() -> dict[str, frozenset[int]] | None:
        # A task's tree grows for a moment after TASK_RUNNING (the wrapper starts the
        # command): take the snapshot once two looks half a second apart agree.
        pids = _pids(ids)
        time.sleep(0.5)
        return pids if all(pids.values()) and _pids(ids) == pids else None

    before = wait_for(all_started, 20, "task pids")

    url = cluster.get("/v1/agents")["agents"][0]["url"]
    for _ in range(KILLS):
        agent.kill9()
        agent.start()
        # The new process registers with a new sandbox URL and has re-adopted every task.
        url = wait_for(lambda old=url: _new_url(cluster, old), 20, "the agent to re-register")
        # The agent's info lists the task a grant names: each one, with its own grant.
        adopted = {
            task_id: cluster.sandbox(task_id).get("/v1/info").json()["tasks"] for task_id in ids
        }
        assert adopted == {task_id: {task_id: "TASK_RUNNING"} for task_id in ids}
        assert agent.process is not None and agent.process.poll() is None
        assert _pids(ids) == before, "a task was restarted or lost across an agent crash"

    tasks = cluster.get("/v1/tasks")["tasks"]
    assert len(tasks) == TASKS, "no duplicate instance was created"
    assert {t["state"] for t in tasks} == {"TASK_RUNNING"}
    assert {t["id"] for t in tasks} == set(ids)
    assert cluster.master is not None
    assert "re-registered without this task" not in cluster.master.log()


def test_task_that_ends_while_agent_is_down_reports_its_real_exit(cluster: Cluster) -> None:
    agent = cluster.start_agent()
    task = cluster.launch(cmd="sleep 1.5; exit 4")
    cluster.wait_state(task["id"], "TASK_RUNNING")
    agent.kill9()
    wait_for(lambda: not task_processes(task["id"]), 10, "the task to end on its own")
    agent.start()
    done = cluster.wait_state(task["id"], "TASK_FAILED", timeout=20)
    assert done["exitCode"] == 4


def test_dropped_connection_is_not_a_missed_heartbeat(tmp_path: Path) -> None:
    """An agent restarting (its connection closed at once) keeps its tasks reachable until
    it has really missed its heartbeats; a quick restart costs no replacement."""
    slow = Cluster(tmp_path, heartbeat_interval=3.0, misses=3)
    slow.start_master(reregistration_timeout=1.0)
    up_since = time.monotonic()
    task_ids: list[str] = []
    try:
        agent = slow.start_agent()
        task = slow.launch(cmd="sleep 600", cpus=0.05, mem=16)
        task_ids.append(task["id"])
        slow.wait_state(task["id"], "TASK_RUNNING")
        # Past the master's re-registration window (1 s) plus the liveness timeout (9 s):
        # from here only the agent's own silence counts.
        time.sleep(max(0.0, 10.0 - (time.monotonic() - up_since)))
        agent.kill9()
        time.sleep(3.0)  # several liveness passes, but at most 6 s of silence of 9 allowed
        assert slow.task(task["id"])["state"] == "TASK_RUNNING"
        agent.start()
        wait_for(lambda: slow.agent_registered("agent-1"), 20, "the agent to re-register")
        assert slow.task(task["id"])["state"] == "TASK_RUNNING"
        assert "missed" not in (slow.task(task["id"]).get("message") or "")
    finally:
        slow.stop()
        for process in (p for task_id in task_ids for p in task_processes(task_id)):
            process.kill()  # if the test failed with the agent down, nothing else would
