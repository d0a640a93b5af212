"""Marathon clients and restarts: the `marathon` library from PyPI against a real master,
and a deployment that goes on after the master is killed in the middle of it."""

from __future__ import annotations

import collections
import collections.abc
import threading
from typing import Any

from test_services import SERVER, deployed, web_app

from tessera.testing.cluster import Cluster, wait_for

# marathon 0.13 imports these from `collections`, where Python 3.10 removed them.
for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

from marathon import MarathonApp, MarathonClient  # noqa: E402


def test_marathon_client_library(cluster: Cluster) -> None:
    cluster.start_agent()
    # DC/OS's token auth (`Authorization: token=...`) for the REST calls; the library's event
    # stream sends only HTTP Basic, so it carries the token as the Basic password.
    # requests' verify=: the cluster CA's file (the API is HTTPS).
    ca = str(cluster.ca_file)
    client = MarathonClient(cluster.url, auth_token=cluster.token, verify=ca)
    streamer = MarathonClient(cluster.url, username="token", password=cluster.token, verify=ca)
    assert client.ping().strip() == b"pong"
    assert client.get_info().name == "marathon"
    assert client.get_leader()["leader"]
    events: list[Any] = []

    def listen() -> None:
        for event in streamer.event_stream(event_types=["deployment_success"]):
            events.append(event)
            return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    created = client.create_app(
        "/client", MarathonApp(cmd="sleep 600", instances=2, cpus=0.1, mem=32)
    )
    assert created.id == "/client" and created.instances == 2
    wait_for(lambda: client.list_deployments() == [], 30, "the first deployment")
    listener.join(10)
    assert events and events[0].event_type == "deployment_success"
    apps = client.list_apps(embed_tasks=True)
    assert [a.id for a in apps] == ["/client"] and len(apps[0].tasks) == 2
    assert client.get_app("/client").tasks_running == 2
    result = client.scale_app("/client", instances=3)
    assert result["deploymentId"]
    wait_for(lambda: len(client.list_tasks("/client")) == 3 and not client.list_deployments(), 30)
    task = client.list_tasks("/client")[0]
    assert task.app_id == "/client" and task.host and task.ports
    client.kill_task("/client", task.id, scale=True)
    wait_for(lambda: not client.list_deployments(), 30, "the scale-down")
    assert client.get_app("/client").instances == 2
    assert task.id not in {t.id for t in client.list_tasks("/client")}
    assert client.list_queue() == []
    assert [g.id for g in client.list_groups()] == []
    client.restart_app("/client")
    wait_for(lambda: not client.list_deployments(), 30, "the restart")
    assert len(client.list_versions("/client")) == 4  # create, scale, kill+scale, restart
    client.delete_app("/client")
    wait_for(lambda: not client.list_deployments(), 30, "the removal")
    assert client.list_apps() == []


def test_deployment_resumes_after_master_restart(cluster: Cluster) -> None:
    cluster.start_agent()
    cluster.http.post("/v2/apps", json=web_app(instances=2))
    deployed(cluster)
    slow = web_app(
        instances=2,
        cmd="sleep 2; " + SERVER,
        env={"VERSION": "v2"},
        upgradeStrategy={"minimumHealthCapacity": 1, "maximumOverCapacity": 0.5},
    )
    change = cluster.http.put("/v2/apps/web", json=slow).json()
    assert cluster.master is not None
    cluster.master.kill9()
    cluster.start_master()
    assert [d["id"] for d in cluster.get("/v2/deployments")] == [change["deploymentId"]]
    deployed(cluster, 60)
    web = cluster.get("/v2/apps/web")["app"]
    assert web["tasksHealthy"] == 2 and web["env"] == {"VERSION": "v2"}
    assert {t["version"] for t in web["tasks"]} == {change["version"]}
