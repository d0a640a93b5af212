"""The rebalancer through the running master: after a scale-down leaves half-empty agents,
`POST /v1/rebalance` empties agents wave by wave with no moment below the apps' minimum
health capacity (sampled); cancel stops between waves; a master killed mid-rebalance
resumes it; bad input and a second rebalance are refused.

The set-up is forced, so the expected plan is known: four agents of 2 cpus, `/big` (1.2
cpus) on each of them pushes one `/small` (0.5 cpus) instance onto every agent; `/big`
then scales to 0, leaving four agents a quarter full. Spreading keeps `/small` on two
agents at least, so the plan empties two agents with two moves, one per wave.
"""

from __future__ import annotations

import time
from typing import Any

from moving import HEALTH, SERVER, Sampler, app_tasks, healthy, start_agents

from tessera.testing.cluster import Cluster, wait_for


def _setup(cluster: Cluster) -> dict[str, str]:
    hosts = start_agents(cluster, 4)
    big = {"id": "/big", "cmd": "sleep 600", "cpus": 1.2, "mem": 16, "instances": 4}
    assert cluster.http.post("/v2/apps", json=big).status_code == 201
    wait_for(lambda: len(app_tasks(cluster, "/big")) == 4, 30, "/big on every agent")
    small = {
        "id": "/small",
        "cmd": SERVER,
        "cpus": 0.5,
        "mem": 32,
        "instances": 4,
        "portDefinitions": [{"port": 0}],
        "healthChecks": [HEALTH],
    }
    assert cluster.http.post("/v2/apps", json=small).status_code == 201
    wait_for(lambda: sum(map(healthy, app_tasks(cluster, "/small"))) == 4, 40, "4 healthy")
    assert len({t["host"] for t in app_tasks(cluster, "/small")}) == 4
    scaled = cluster.http.put("/v2/apps/big", json={"instances": 0})
    assert scaled.status_code == 200, scaled.text
    wait_for(lambda: not app_tasks(cluster, "/big"), 30, "/big gone")
    wait_for(lambda: not cluster.get("/v2/deployments"), 30, "no deployment")
    return hosts


def _in_use(cluster: Cluster) -> int:
    return sum(1 for a in cluster.get("/v1/agents")["agents"] if a["tasks"] > 0)


def _status(cluster: Cluster, rebalance_id: str) -> dict[str, Any]:
    return dict(cluster.get(f"/v1/rebalance/{rebalance_id}"))


def _start(cluster: Cluster) -> dict[str, Any]:
    answer = cluster.http.post("/v1/rebalance", json={})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_a_rebalance_empties_agents_without_dropping_below_the_minimum(
    cluster: Cluster,
) -> None:
    _setup(cluster)
    dry = cluster.http.post("/v1/rebalance", json={"dryRun": True}).json()
    assert dry["agentsBefore"] == 4 and dry["agentsAfter"] == 2 and len(dry["moves"]) == 2
    assert _in_use(cluster) == 4  # a dry run moves nothing

    with Sampler(cluster, "/small") as sampler:
        started = _start(cluster)
        assert started["status"] == "RUNNING" and started["waves"] == 2
        again = cluster.http.post("/v1/rebalance", json={})
        assert again.status_code == 409 and again.json()["rebalance"] == started["id"]
        ended = wait_for(
            lambda: (s := _status(cluster, started["id"]))["status"] != "RUNNING" and s,
            90,
            "the rebalance to end",
        )
    assert ended["status"] == "FINISHED" and ended["movesDone"] == 2, ended
    assert sampler.samples > 10 and sampler.lowest == 4
    assert _in_use(cluster) == 2
    agents = {a["id"]: a for a in cluster.get("/v1/agents")["agents"]}
    for freed in ended["freed"]:
        assert agents[freed]["state"] == "ACTIVE" and agents[freed]["tasks"] == 0
    moved = [t for t in app_tasks(cluster, "/small") if healthy(t)]
    assert len(moved) == 4

    # The two replacements are in their cool-down: a plan would not move them.
    after = cluster.http.post("/v1/rebalance", json={"dryRun": True}).json()
    cooling = [task for task, why in after["blocked"].items() if "pinned" in why]
    assert len(cooling) == 2 and all(t.startswith("small.") for t in cooling), after

    # Nothing left to gain: said, and nothing moves.
    nothing = cluster.http.post("/v1/rebalance", json={})
    assert nothing.status_code == 200 and nothing.json()["id"] is None
    assert nothing.json()["reason"] and nothing.json()["moves"] == []

    # Bad input.
    assert cluster.http.post("/v1/rebalance", json={"maxMoves": -1}).status_code == 422
    assert cluster.http.post("/v1/rebalance", json={"maxMoves": "2"}).status_code == 422
    assert cluster.http.post("/v1/rebalance", json={"wat": 1}).status_code == 422
    assert cluster.http.get("/v1/rebalance/rebalance-nope").status_code == 404
    assert cluster.http.delete("/v1/rebalance/rebalance-nope").status_code == 404
    assert cluster.http.delete(f"/v1/rebalance/{started['id']}").status_code == 409


def test_cancel_stops_between_waves(cluster: Cluster) -> None:
    _setup(cluster)
    started = _start(cluster)
    cancelled = cluster.http.delete(f"/v1/rebalance/{started['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLING"
    ended = wait_for(
        lambda: (s := _status(cluster, started["id"]))["status"] == "CANCELLED" and s,
        60,
        "the rebalance cancelled",
    )
    # The first wave finished; the second never started.
    assert ended["movesDone"] == 1 and ended["message"] == "cancelled between waves"
    wait_for(lambda: sum(map(healthy, app_tasks(cluster, "/small"))) == 4, 30, "4 healthy")
    assert _in_use(cluster) == 3
    assert all(a["state"] == "ACTIVE" for a in cluster.get("/v1/agents")["agents"])


def test_a_master_killed_mid_rebalance_resumes_it(cluster: Cluster) -> None:
    _setup(cluster)
    started = _start(cluster)
    assert cluster.master is not None
    cluster.master.kill9()
    cluster.start_master()
    ended = wait_for(
        lambda: (s := _status(cluster, started["id"]))["status"] != "RUNNING" and s,
        120,
        "the resumed rebalance to end",
    )
    assert ended["status"] == "FINISHED" and ended["movesDone"] == 2, ended
    wait_for(lambda: sum(map(healthy, app_tasks(cluster, "/small"))) == 4, 30, "4 healthy")
    assert len(app_tasks(cluster, "/small")) == 4
    assert _in_use(cluster) == 2


def test_the_periodic_rebalance_frees_agents_on_its_own(cluster: Cluster) -> None:
    _setup(cluster)
    assert cluster.master is not None
    cluster.master.stop()
    cluster.start_master(extra=["--rebalance-interval", "2"])

    def finished() -> dict[str, Any] | None:
        found = cluster.get("/v1/rebalance")["rebalances"]
        return found[0] if found and found[0]["status"] == "FINISHED" else None

    ended = wait_for(finished, 90, "a periodic rebalance to finish")
    assert ended["user"] is None and ended["movesDone"] == 2
    assert _in_use(cluster) == 2
    # Nothing more to gain: no second rebalance starts.
    time.sleep(5)
    assert len(cluster.get("/v1/rebalance")["rebalances"]) == 1
