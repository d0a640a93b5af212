"""Drain and maintenance through the running master: a drained agent's healthy service
moves without a moment below its minimum health capacity (sampled), its one-off task runs
until the deadline, the agent ends DRAINED and comes back with reactivate; an instance with
nowhere to go stays and the drain says why."""

from __future__ import annotations

import math

from moving import HEALTH, SERVER, Sampler, agent, app_tasks, healthy, start_agents

from tessera.testing.cluster import Cluster, wait_for


def test_a_drain_moves_a_healthy_service_without_dropping_below_its_minimum(
    cluster: Cluster,
) -> None:
    hosts = start_agents(cluster, 3)
    web = {
        "id": "/web",
        "cmd": SERVER,
        "cpus": 0.5,
        "mem": 64,
        "instances": 3,
        "portDefinitions": [{"port": 0}],
        "healthChecks": [HEALTH],
        "upgradeStrategy": {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.34},
    }
    assert cluster.http.post("/v2/apps", json=web).status_code == 201
    wait_for(lambda: sum(map(healthy, app_tasks(cluster, "/web"))) == 3, 40, "3 healthy")
    drained = hosts[app_tasks(cluster, "/web")[0]["host"]]
    one_off = cluster.http.post(
        "/v1/tasks",
        json={"name": "batch", "cmd": "sleep 600", "cpus": 0.1, "mem": 16},
    ).json()
    wait_for(lambda: cluster.task(one_off["id"])["state"] == "TASK_RUNNING", 20, "one-off runs")

    with Sampler(cluster, "/web") as sampler:
        answer = cluster.http.post(f"/v1/agents/{drained}/drain", json={"deadlineSeconds": 4})
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "DRAINING"
        assert answer.json()["drain"]["remaining"] >= 1

        def moved() -> bool:
            tasks = app_tasks(cluster, "/web")
            return (
                len(tasks) == 3
                and all(healthy(t) for t in tasks)
                and all(hosts[t["host"]] != drained for t in tasks)
            )

        wait_for(moved, 60, "the instance moved off the drained agent")
    assert sampler.samples > 10
    assert sampler.lowest is not None and sampler.lowest >= math.ceil(3 * 1.0)

    # The one-off task on it (if it went there) ran until the deadline, then was killed.
    ended = cluster.task(one_off["id"])
    if ended["agentId"] == drained:
        ended = cluster.wait_state(one_off["id"], "TASK_KILLED", timeout=20)
        assert ended["reason"] == "REASON_AGENT_DRAINING"
    wait_for(lambda: agent(cluster, drained)["state"] == "DRAINED", 20, "the agent DRAINED")
    # No new work goes there: a scale-up lands on the other agents.
    scaled = cluster.http.put("/v2/apps/web", json={"instances": 4})
    assert scaled.status_code == 200, scaled.text
    wait_for(lambda: len(app_tasks(cluster, "/web")) == 4, 30, "four instances")
    assert all(hosts[t["host"]] != drained for t in app_tasks(cluster, "/web"))

    back = cluster.http.post(f"/v1/agents/{drained}/reactivate")
    assert back.status_code == 200 and back.json()["state"] == "ACTIVE"
    assert "drain" not in back.json()


def test_an_instance_with_nowhere_to_go_stays_and_the_drain_says_why(cluster: Cluster) -> None:
    hosts = start_agents(cluster, 2)
    unique = {
        "id": "/unique",
        "cmd": "sleep 600",
        "cpus": 0.1,
        "mem": 16,
        "instances": 2,
        "constraints": [["hostname", "UNIQUE"]],
    }
    assert cluster.http.post("/v2/apps", json=unique).status_code == 201
    wait_for(
        lambda: sum(t["state"] == "TASK_RUNNING" for t in app_tasks(cluster, "/unique")) == 2,
        30,
        "two instances",
    )
    drained = hosts["127.0.0.1"]
    assert cluster.http.post(f"/v1/agents/{drained}/drain").status_code == 200

    def why() -> str | None:
        blocked = agent(cluster, drained)["drain"]["blocked"]
        reasons = [b["reason"] for b in blocked if "UnfulfilledConstraint" in b["reason"]]
        return reasons[0] if reasons else None

    reason = wait_for(why, 20, "the drain to say why")
    assert "has no agent to go to" in reason
    running = [t for t in app_tasks(cluster, "/unique") if t["state"] == "TASK_RUNNING"]
    assert len(running) == 2 and agent(cluster, drained)["state"] == "DRAINING"

    # Reactivated, the replacement that waited is no longer needed: the app stays at 2.
    assert cluster.http.post(f"/v1/agents/{drained}/reactivate").status_code == 200
    wait_for(lambda: len(app_tasks(cluster, "/unique")) == 2, 20, "the waiting copy dropped")


def test_drain_bad_input(cluster: Cluster) -> None:
    hosts = start_agents(cluster, 1)
    unknown = cluster.http.post("/v1/agents/no-such-agent/drain")
    assert unknown.status_code == 404 and "no-such-agent" in unknown.json()["message"]
    assert cluster.http.post("/v1/agents/no-such-agent/reactivate").status_code == 404
    agent_id = hosts["127.0.0.1"]
    negative = cluster.http.post(f"/v1/agents/{agent_id}/drain", json={"deadlineSeconds": -1})
    assert negative.status_code == 422
    assert negative.json()["details"][0]["path"] == "/deadlineSeconds"
    extra = cluster.http.post(f"/v1/agents/{agent_id}/drain", json={"deadline": 5})
    assert extra.status_code == 422
    # An empty agent drains straight to DRAINED.
    assert cluster.http.post(f"/v1/agents/{agent_id}/drain").json()["state"] == "DRAINED"


def test_drain_and_rebalance_from_the_cli(cluster: Cluster) -> None:
    hosts = start_agents(cluster, 1)
    agent_id = hosts["127.0.0.1"]
    unknown = cluster.cli("agent", "drain", "no-such-agent")
    assert unknown.returncode != 0
    assert unknown.stderr.strip().count("\n") == 0 and "no-such-agent" in unknown.stderr
    drained = cluster.cli("agent", "drain", agent_id, "--deadline", "10m")
    assert drained.returncode == 0, drained.stderr
    assert "DRAINED" in drained.stdout and "deadline" in drained.stdout
    shown = cluster.cli("agent", "show", agent_id)
    assert "DRAINED" in shown.stdout and "nothing runs there" in shown.stdout
    bad = cluster.cli("agent", "drain", agent_id, "--deadline", "soon")
    assert bad.returncode != 0 and "90s, 15m" in bad.stderr
    back = cluster.cli("agent", "reactivate", agent_id)
    assert back.returncode == 0 and "ACTIVE" in back.stdout
    negative = cluster.cli("rebalance", "--max-moves", "-1")
    assert negative.returncode != 0 and "--max-moves" in negative.stderr
    assert negative.stderr.strip().count("\n") == 0
    nothing = cluster.cli("rebalance", "--dry-run")
    assert nothing.returncode == 0 and "nothing to do" in nothing.stdout
    none_yet = cluster.cli("rebalance", "status")
    assert none_yet.returncode != 0 and "no rebalance has run yet" in none_yet.stderr
