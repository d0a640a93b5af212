"""Fault 6: status updates and acknowledgements dropped and duplicated on the agent channel.
Every terminal state must be recorded exactly once: the right one, and never changed."""

from __future__ import annotations

import time
from typing import Any

from tessera.testing.cluster import Cluster, wait_for
from tessera.testing.flaky_proxy import FlakyProxy

TASKS = 24
TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED"}


def test_lossy_duplicating_channel_records_each_end_once(cluster: Cluster) -> None:
    resources = "cpus:4;mem:4096;disk:100;ports:[31000-31099]"
    # The proxy relays with the agent's own certificates: the agent joins directly first.
    cluster.start_agent(resources=resources).stop()
    wait_for(lambda: not cluster.agent_registered("agent-1"), 20, "the agent to be gone")
    proxy = FlakyProxy(cluster.channel_url, cluster.root / "agent-1", drop=0.3, duplicate=0.3)
    proxy.start()
    try:
        cluster.start_agent(resources=resources, master=proxy.url)

        expected: dict[str, tuple[str, int]] = {}
        for index in range(TASKS):
            code = index % 3
            task = cluster.launch(name=f"t{index}", cmd=f"sleep 0.{index % 5}; exit {code}")
            expected[task["id"]] = ("TASK_FINISHED" if code == 0 else "TASK_FAILED", code)

        first_seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(first_seen) < TASKS and time.monotonic() < deadline:
            for task in cluster.get("/v1/tasks")["tasks"]:
                if task["state"] in TERMINAL:
                    first_seen.setdefault(task["id"], task)
            time.sleep(0.1)
        assert len(first_seen) == TASKS, f"only {len(first_seen)} tasks ended"
        # Let the resends and duplicates keep arriving for a while: nothing may change.
        time.sleep(3)
        final = {t["id"]: t for t in cluster.get("/v1/tasks")["tasks"]}
        for task_id, (state, code) in expected.items():
            assert final[task_id]["state"] == state, final[task_id]
            assert final[task_id]["exitCode"] == code
            assert final[task_id]["finishedAt"] == first_seen[task_id]["finishedAt"]
            assert first_seen[task_id]["state"] == state
        assert proxy.counts["dropped status"] > 0 and proxy.counts["duplicated status"] > 0
        assert proxy.counts["dropped ack"] > 0 and proxy.counts["duplicated ack"] > 0
    finally:
        proxy.stop()
