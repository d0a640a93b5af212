"""Three real masters on a three-member etcd, with a real agent: one leads, the others
forward; the agent follows the leader; a leader stopped with SIGTERM hands over at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.testing.cluster import task_processes, wait_for
from tessera.testing.etcd import MISSING_REASON, EtcdCluster, etcd_binary
from tessera.testing.ha_cluster import MasterGroup

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=MISSING_REASON)

TINY = {"cpus": 0.01, "mem": 8}


@pytest.fixture
def group(tmp_path: Path) -> Iterator[MasterGroup]:
    with EtcdCluster(tmp_path / "etcd", size=3) as etcd:
        made = MasterGroup(tmp_path / "masters", etcd.url, size=3, lease=3)
        try:
            made.start()
            yield made
        except BaseException:
            print(made.logs())
            raise
        finally:
            made.stop()


def test_one_leads_the_others_forward_and_the_agent_follows(group: MasterGroup) -> None:
    leader = group.wait_leader()
    followers = [i for i in range(3) if i != leader]
    leader_address = group.urls[leader].removeprefix("https://")
    for index in range(3):
        view = group.leader_seen_by(index)
        assert view is not None
        assert view["url"] == group.urls[leader] and view["self"] == (index == leader)
        assert view["ha"] is True and view["term"] > 0
        marathon = group.http.get(group.urls[index] + "/v2/leader").json()
        assert marathon == {"leader": leader_address}

    # The agent's list starts with a follower: it is told who leads and dials it.
    group.start_agent(masters=[group.urls[i] for i in [*followers, leader]])
    agent_log = group.agents[0].log()
    assert "does not lead" in agent_log, agent_log

    # A write through a follower is forwarded, and its answer says who served it.
    via = group.urls[followers[1]]
    response = group.http.post(
        via + "/v1/tasks", json={"name": "forwarded", "cmd": "sleep 600", **TINY}
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-marathon-leader"] == group.urls[leader]
    task_id = response.json()["id"]
    wait_for(
        lambda: group.get(f"/v1/tasks/{task_id}", via)["state"] == "TASK_RUNNING",
        20,
        "the forwarded task to run",
    )
    info = group.get("/v2/info", via)
    assert info["elected"] is True and info["marathon_config"]["ha"] is True

    # Marathon's abdication, sent to a follower, reaches the leader, which steps down.
    answer = group.http.delete(group.urls[followers[0]] + "/v2/leader")
    assert answer.json() == {"message": "Leadership abdicated"}
    daemon = group.masters[leader]
    assert daemon is not None and daemon.process is not None
    assert daemon.process.wait(15) == 75
    assert group.wait_leader(followers, timeout=5) in followers


def test_sigterm_hands_the_leadership_over_and_tasks_keep_running(group: MasterGroup) -> None:
    old = group.wait_leader()
    group.start_agent()
    launched = group.http.post(
        group.urls[old] + "/v1/tasks", json={"name": "kept", "cmd": "sleep 600", **TINY}
    )
    assert launched.status_code == 201, launched.text
    task_id = launched.json()["id"]
    wait_for(lambda: group.get(f"/v1/tasks/{task_id}")["state"] == "TASK_RUNNING", 20, "running")
    before = {p.pid for p in task_processes(task_id)}

    daemon = group.masters[old]
    assert daemon is not None and daemon.process is not None
    stopped_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    # A clean stop (uvicorn ends by re-raising the signal), not a lost leadership (75).
    assert daemon.process.wait(15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in daemon.log()
    others = [i for i in range(3) if i != old]
    new = group.wait_leader(others, timeout=10)
    # The lease was revoked on the way out: no waiting for it to expire.
    handover = time.monotonic() - stopped_at
    assert handover < 3, f"handover took {handover:.1f}s"

    wait_for(lambda: group.agent_registered("agent-1", group.urls[new]), 20, "agent to follow")
    task = group.get(f"/v1/tasks/{task_id}", group.urls[new])
    assert task["state"] == "TASK_RUNNING"
    assert {p.pid for p in task_processes(task_id)} >= before  # not launched again

    # The stopped master comes back as a follower.
    group.start_master(old)
    assert group.wait_leader() == new
    view = group.leader_seen_by(old)
    assert view is not None and view["self"] is False


def test_without_a_leader_the_api_answers_503_and_who_leads_404(tmp_path: Path) -> None:
    """A leader cut off from etcd steps down and exits; started again while etcd is still
    unreachable, it cannot lead and says so instead of guessing; then etcd comes back."""
    with EtcdCluster(tmp_path / "etcd", size=1) as etcd:
        group = MasterGroup(tmp_path / "masters", etcd.url + "&timeout=1", size=1, lease=2)
        try:
            group.start()
            group.wait_leader()
            daemon = group.masters[0]
            assert daemon is not None and daemon.process is not None
            etcd.members[0].pause()
            assert daemon.process.wait(15) == 75  # stepped down after its renew deadline
            group.start_master(0)
            url = group.urls[0]
            # It has never read the cluster's keys, so it cannot check a token: it says so
            # rather than letting anyone in.
            for path in ("/v1/leader", "/v2/leader"):
                answer = group.http.get(url + path)
                assert answer.status_code == 503, (path, answer.text)
                assert "retry" in answer.json()["message"]
            refused = group.http.post(url + "/v1/tasks", json={"cmd": "true", **TINY})
            assert refused.status_code == 503
            etcd.members[0].resume()
            assert group.wait_leader() == 0
        finally:
            group.stop()
