"""Isolation seen from outside: the task's cgroups carry its limits, OOM kills are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.testing.cluster import Cluster, task_processes, wait_for


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    """controller -> cgroup directory of `pid`, for v1 hierarchies and the v2 unified one."""
    found: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            for root in (Path("/sys/fs/cgroup") / controller, Path("/sys/fs/cgroup")):
                candidate = root / path.lstrip("/")
                if candidate.is_dir() and path != "/":
                    found[controller] = candidate
                    break
    return found


def _isolation(cluster: Cluster) -> dict[str, object]:
    agents = cluster.get("/v1/agents")["agents"]
    isolation: dict[str, object] = agents[0]["isolation"]
    return isolation


def _require_cgroups(cluster: Cluster) -> str:
    version = _isolation(cluster).get("cgroups")
    if not version:
        pytest.skip(f"no writable cgroup filesystem: {_isolation(cluster).get('warning')}")
    return str(version)


def test_task_cgroup_carries_memory_limit_and_cpu_weight(cluster: Cluster) -> None:
    cluster.start_agent()
    version = _require_cgroups(cluster)
    task = cluster.launch(name="limited", cmd="sleep 60", cpus=0.5, mem=96)
    cluster.wait_state(task["id"], "TASK_RUNNING")
    processes = wait_for(lambda: task_processes(task["id"]), 10, "the task process")
    dirs = _cgroup_dirs(processes[0].pid)
    if version == "v1":
        limit = int((dirs["memory"] / "memory.limit_in_bytes").read_text())
        shares = int((dirs["cpu"] / "cpu.shares").read_text())
        assert limit == 96 * 1024 * 1024
        assert shares == 512
        assert task["id"] in str(dirs["memory"])
    else:
        assert int((dirs["unified"] / "memory.max").read_text()) == 96 * 1024 * 1024
        weight = int((dirs["unified"] / "cpu.weight").read_text())
        assert weight == 1 + ((512 - 2) * 9999) // 262142


def test_memory_hog_fails_with_memory_reason(cluster: Cluster) -> None:
    cluster.start_agent()
    _require_cgroups(cluster)
    hog = "import time; b = bytearray(256 * 1024 * 1024); time.sleep(30)"
    task = cluster.launch(name="hog", args=["python3", "-c", hog], mem=64)
    done = cluster.wait_state(task["id"], "TASK_FAILED", "TASK_FINISHED", timeout=30)
    assert done["state"] == "TASK_FAILED"
    assert done["reason"] == "REASON_CONTAINER_LIMITATION_MEMORY"
    assert "64" in (done["message"] or "")


def test_usage_is_served_from_the_cgroup(cluster: Cluster) -> None:
    cluster.start_agent()
    _require_cgroups(cluster)
    task = cluster.launch(cmd="sleep 60", mem=64)
    cluster.wait_state(task["id"], "TASK_RUNNING")
    sandbox = cluster.sandbox(task["id"])
    usage = sandbox.get(f"/v1/tasks/{task['id']}/usage").json()
    assert usage["source"] == "cgroup"
    assert usage["mem_limit_bytes"] == 64 * 1024 * 1024
    assert usage["pids"] >= 1
    assert usage["mem_bytes"] > 0
