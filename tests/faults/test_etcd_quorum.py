"""Fault 8: etcd loses its quorum under two masters. Writes are refused with a clear 503,
running tasks keep running, and nothing acknowledged is lost when the quorum returns.

Real etcd (three members, two of them paused), master and agent processes. A master whose
term ends exits for its supervisor to start again; the test plays the supervisor."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tessera.testing.cluster import task_processes, wait_for
from tessera.testing.etcd import MISSING_REASON, EtcdCluster, etcd_binary
from tessera.testing.ha_cluster import MasterGroup

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=MISSING_REASON)

TINY = {"cpus": 0.01, "mem": 8}
OUTAGE = 8.0


def _pids(task_ids: list[str]) -> dict[str, frozenset[int]]:
    return {task_id: frozenset(p.pid for p in task_processes(task_id)) for task_id in task_ids}


def _supervise(group: MasterGroup) -> None:
    """Start again every master that exited (a term that ended), as systemd would."""
    for index, daemon in enumerate(group.masters):
        if daemon is not None and daemon.process is not None and daemon.process.poll() is not None:
            group.start_master(index)


def test_quorum_loss_refuses_writes_keeps_tasks_and_loses_nothing(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd", size=3) as etcd:
        group = MasterGroup(tmp_path / "masters", etcd.url + "&timeout=1", size=2, lease=3)
        try:
            group.start()
            leader = group.urls[group.wait_leader()]
            group.start_agent()
            acknowledged: list[str] = []
            for n in range(5):
                response = group.http.post(
                    leader + "/v1/tasks", json={"name": f"before{n}", "cmd": "sleep 600", **TINY}
                )
                assert response.status_code == 201, response.text
                acknowledged.append(response.json()["id"])
            wait_for(
                lambda: (
                    all(
                        group.get(f"/v1/tasks/{t}")["state"] == "TASK_RUNNING" for t in acknowledged
                    )
                    and all(_pids(acknowledged).values())
                ),
                30,
                "the tasks to run",
            )
            before = _pids(acknowledged)

            # Two of three members stop answering: no quorum.
            for member in etcd.members[1:]:
                member.pause()
            refusals: dict[int, str] = {}
            accepted_during_outage: list[str] = []
            started = time.monotonic()
            with httpx.Client(timeout=5, headers=group.headers, verify=group.ssl_context) as client:
                n = 0
                while time.monotonic() - started < OUTAGE:
                    _supervise(group)
                    for url in group.urls:
                        n += 1
                        try:
                            response = client.post(
                                url + "/v1/tasks",
                                json={"name": f"during{n}", "cmd": "sleep 600", **TINY},
                            )
                        except httpx.HTTPError:
                            continue  # a master between its exit and its restart
                        if response.status_code == 201:
                            accepted_during_outage.append(response.json()["id"])
                        else:
                            refusals[response.status_code] = _message(response)
                    time.sleep(0.2)
            # Every write was refused, and each refusal says why.
            assert accepted_during_outage == [], "a write was acknowledged without a quorum"
            assert set(refusals) == {503}, refusals
            # A master without the store says so; a follower whose leader is restarting (it
            # exits when its term ends) says it cannot reach it.
            message = refusals[503].lower()
            reasons = ("store unavailable", "leading master", "unreachable")
            assert any(reason in message for reason in reasons), message
            # Running tasks did not notice.
            assert _pids(acknowledged) == before, "a task stopped or restarted during the outage"

            for member in etcd.members[1:]:
                member.resume()

            def leading() -> bool:
                _supervise(group)
                return group.leader(group.running()) is not None

            wait_for(leading, 30, "a leader once the quorum is back")
            wait_for(lambda: group.agent_registered("agent-1"), 40, "the agent to re-register")
            tasks = {t["id"]: t for t in group.get("/v1/tasks")["tasks"]}
            assert set(acknowledged) <= set(tasks), "an acknowledged task was lost"
            assert {tasks[t]["state"] for t in acknowledged} == {"TASK_RUNNING"}
            assert _pids(acknowledged) == before, "a task was restarted after the outage"
            after = group.http.post(
                group.url_of_leader() + "/v1/tasks", json={"name": "after", "cmd": "true", **TINY}
            )
            assert after.status_code == 201, after.text
        except BaseException:
            print(group.logs())
            raise
        finally:
            group.stop()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["message"])
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
