"""The kernel end to end: a real master, real agents, real task processes on loopback."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil

from tessera.testing.cluster import Cluster, task_processes, wait_for


def test_task_runs_with_environment_and_output(cluster: Cluster) -> None:
    cluster.start_agent(host="127.0.0.1")
    task = cluster.launch(
        name="hello",
        cmd='echo "id=$MESOS_TASK_ID host=$HOST port=$PORT0 named=$PORT_WEB x=$X"; echo oops >&2',
        env={"X": "42"},
        portDefinitions=[{"port": 0, "name": "web"}],
    )
    done = cluster.wait_state(task["id"], "TASK_FINISHED", "TASK_FAILED")
    assert done["state"] == "TASK_FINISHED", done
    assert done["exitCode"] == 0
    port = done["ports"][0]
    assert 31000 <= port <= 31099
    logs = cluster.cli("task", "logs", task["id"])
    assert logs.returncode == 0, logs.stderr
    assert f"id={task['id']} host=127.0.0.1 port={port} named={port} x=42" in logs.stdout
    errors = cluster.cli("task", "logs", "--stderr", task["id"])
    assert errors.stdout.strip() == "oops"


def test_run_wait_streams_output_and_exit_code(cluster: Cluster) -> None:
    cluster.start_agent()
    ok = cluster.cli("run", "--wait", "--", "sh", "-c", "echo one; sleep 0.3; echo two")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["one", "two"]
    failing = cluster.cli("run", "--wait", "--", "sh -c 'echo bad >&2; exit 7'")
    assert failing.returncode == 7
    assert "bad" in failing.stderr


def test_command_that_cannot_start_fails_with_its_error(cluster: Cluster) -> None:
    cluster.start_agent()
    task = cluster.launch(args=["/no/such/program", "x"])
    done = cluster.wait_state(task["id"], "TASK_FAILED")
    assert "/no/such/program" in (done["message"] or "")


def test_kill_leaves_no_process_behind(cluster: Cluster) -> None:
    cluster.start_agent()
    stubborn = (
        "trap '' TERM; (trap '' TERM; sleep 300) & (trap '' TERM; sh -c 'sleep 301') & sleep 302"
    )
    task = cluster.launch(cmd=stubborn, killGracePeriodSeconds=0.5)
    cluster.wait_state(task["id"], "TASK_RUNNING")
    wait_for(lambda: len(task_processes(task["id"])) >= 4, 10, "the process tree")
    before = task_processes(task["id"])
    killed = cluster.cli("task", "kill", task["id"])
    assert killed.returncode == 0, killed.stderr
    cluster.wait_state(task["id"], "TASK_KILLED", timeout=15)
    _gone, alive = psutil.wait_procs(before, timeout=5)
    assert alive == [], f"still alive after kill: {alive}"
    assert task_processes(task["id"]) == []


def test_task_that_fits_nowhere_stays_queued_with_reason(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:1;mem:512;disk:100;ports:[31000-31010]")
    task = cluster.launch(name="huge", cmd="true", cpus=64)
    queued = wait_for(
        lambda: (t := cluster.task(task["id"]))["queuedReasons"] and t, 10, "a queue reason"
    )
    assert queued["state"] == "TASK_QUEUED"
    assert queued["queuedReasons"] == {"InsufficientCpus": 1}
    listed = cluster.cli("task", "list")
    assert "InsufficientCpus" in listed.stdout
    shown = json.loads(cluster.cli("task", "show", "--json", task["id"]).stdout)
    assert shown["queuedReasons"] == {"InsufficientCpus": 1}


def test_agent_without_token_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    args = cluster.agent_args("intruder", "cpus:1;mem:256")
    args[args.index("--join-token") + 1] = "tsr1.0123456789abcdef." + "A" * 43
    result = cluster.cli(*args, timeout=30)
    assert result.returncode == 2
    assert "refused the join token" in result.stderr
    assert cluster.get("/v1/agents")["agents"] == []
    no_token = cluster.agent_args("intruder", "cpus:1;mem:256")
    del no_token[no_token.index("--join-token") : no_token.index("--join-token") + 2]
    result = cluster.cli(*no_token, timeout=30)
    assert result.returncode == 1
    assert "has not joined the cluster yet" in result.stderr


def test_second_agent_with_live_id_is_refused(cluster: Cluster) -> None:
    cluster.start_agent("agent-1")
    twin_args = cluster.agent_args("agent-1", "cpus:1;mem:256")
    result = cluster.cli(*twin_args, timeout=30)
    assert result.returncode == 2
    assert "already registered and connected" in result.stderr


def test_missed_heartbeats_mark_agent_and_tasks_unreachable(cluster: Cluster) -> None:
    agent = cluster.start_agent()
    task = cluster.launch(cmd="sleep 60")
    cluster.wait_state(task["id"], "TASK_RUNNING")
    agent.signal(signal.SIGSTOP)
    try:
        cluster.wait_state(task["id"], "TASK_UNREACHABLE", timeout=10)
        states = {a["state"] for a in cluster.get("/v1/agents")["agents"]}
        assert states == {"UNREACHABLE"}
    finally:
        agent.signal(signal.SIGCONT)
    cluster.wait_state(task["id"], "TASK_RUNNING", timeout=15)
    assert cluster.agent_registered("agent-1")


def test_master_restart_keeps_records(cluster: Cluster) -> None:
    cluster.start_agent()
    running = cluster.launch(name="keeper", cmd="sleep 60")
    finished = cluster.launch(name="done", cmd="true")
    cluster.wait_state(running["id"], "TASK_RUNNING")
    cluster.wait_state(finished["id"], "TASK_FINISHED")
    assert cluster.master is not None
    cluster.master.kill9()
    cluster.start_master()
    # Everything acknowledged before the crash is still there, and the agent comes back.
    assert cluster.task(finished["id"])["state"] == "TASK_FINISHED"
    assert cluster.task(running["id"])["state"] in ("TASK_RUNNING", "TASK_UNREACHABLE")
    wait_for(lambda: cluster.agent_registered("agent-1"), 20, "the agent to re-register")
    cluster.wait_state(running["id"], "TASK_RUNNING")
    pids = [p.pid for p in task_processes(running["id"])]
    assert pids, "the task kept running through the master restart"


def test_cluster_summary_counts_allocation(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:2;mem:1024;disk:100;ports:[31000-31010]")
    task = cluster.launch(cmd="sleep 30", cpus=0.5, mem=256)
    cluster.wait_state(task["id"], "TASK_RUNNING")
    summary = cluster.get("/v1/cluster/summary")
    assert summary["capacity"]["cpus"] == 2 and summary["capacity"]["mem"] == 1024
    assert summary["allocated"]["cpus"] == 0.5 and summary["allocated"]["mem"] == 256
    assert summary["free"]["cpus"] == 1.5


def test_ports_never_shared_on_one_agent(cluster: Cluster) -> None:
    cluster.start_agent(resources="cpus:4;mem:2048;disk:100;ports:[31000-31002]")
    tasks = [cluster.launch(cmd="sleep 30", portDefinitions=[{"port": 0}]) for _ in range(4)]
    started = time.monotonic()
    running = [cluster.wait_state(t["id"], "TASK_RUNNING") for t in tasks[:3]]
    assert sorted(t["ports"][0] for t in running) == [31000, 31001, 31002]
    fourth = wait_for(lambda: (t := cluster.task(tasks[3]["id"]))["queuedReasons"] and t, 10)
    assert fourth["queuedReasons"] == {"InsufficientPorts": 1}
    assert time.monotonic() - started < 20
