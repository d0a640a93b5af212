"""`tessera up` and `tessera down`: a whole cluster on this machine in one command."""

from __future__ import annotations

import contextlib
import io
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tessera.cli.client import MasterClient, err, fail
from tessera.cli.render import out
from tessera.cli.teams import team_create
from tessera.local.cluster import ClusterError, LocalCluster, start_cluster, stop_cluster
from tessera.local.demo import (
    DEMO_CONTAINER_CMD,
    DEMO_CONTAINER_PAGE,
    DEMO_IMAGE_REPOSITORY,
    DEMO_IMAGE_TAG,
    DEMO_JOB,
    DEMO_SERVICE,
    DEMO_TASKS,
    demo_container_service,
)
from tessera.local.paths import default_work_dir
from tessera.local.profiles import Profile, save_profile
from tessera.local.registry import DEFAULT_REGISTRY_PORT
from tessera.master.auth_files import ADMIN_PASSWORD, ADMIN_TOKEN
from tessera.model.resources import ResourceFormatError, parse_resources
from tessera.security.ca import write_private


def up(
    agents: Annotated[int, typer.Option(min=1, max=64, help="How many agents to start.")] = 3,
    port: Annotated[int, typer.Option(help="Master port.")] = 5050,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where the cluster keeps its files (~/.tessera/local).")
    ] = None,
    agent_resources: Annotated[
        str | None,
        typer.Option(help='Resources of each agent, e.g. "cpus:2;mem:4096" (default: a share).'),
    ] = None,
    detach: Annotated[
        bool, typer.Option(help="Start and return; stop with `tessera down`.")
    ] = False,
    demo: Annotated[bool, typer.Option(help="Launch a few demo tasks once it is up.")] = False,
    registry: Annotated[
        bool,
        typer.Option(help="Also run a container registry on 127.0.0.1 (see --registry-port)."),
    ] = False,
    registry_port: Annotated[int, typer.Option(help="Port of --registry.")] = DEFAULT_REGISTRY_PORT,
) -> None:
    """Start a master and N agents on this machine; Ctrl-C stops everything it started."""
    directory = (work_dir or default_work_dir()).resolve()
    try:
        override = parse_resources(agent_resources) if agent_resources else None
    except ResourceFormatError as error:
        fail(str(error))
    err.print(f"starting a master and {agents} agents in {directory} ...")
    try:
        cluster = start_cluster(
            directory, agents, port, override, registry_port=registry_port if registry else None
        )
    except ClusterError as error:
        fail(str(error))
    # The CLI, the demo and every `tessera` command after this use the superuser's token.
    save_profile(
        Profile(
            name="local",
            url=cluster.master_url,
            token_file=str(directory / ADMIN_TOKEN),
            uid="admin",
            password_file=str(directory / ADMIN_PASSWORD),
            ca=str(directory / "ca.pem"),
        )
    )
    if demo:
        _launch_demo(cluster)
    _print_where_to_look(cluster, detach)
    if detach:
        return
    _wait_for_interrupt()
    err.print("stopping the cluster and every task it started ...")
    stopped = stop_cluster(directory)
    err.print(f"stopped: {', '.join(stopped)}")


def down(
    work_dir: Annotated[
        Path | None, typer.Option(help="The work dir given to `tessera up` (~/.tessera/local).")
    ] = None,
) -> None:
    """Stop a local cluster started with `tessera up --detach`, and every task it ran."""
    directory = (work_dir or default_work_dir()).resolve()
    try:
        stopped = stop_cluster(directory)
    except ClusterError as error:
        fail(str(error))
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def _launch_demo(cluster: LocalCluster) -> None:
    client = MasterClient(cluster.master_url)
    for body in DEMO_TASKS:
        task = client.post("/v1/tasks", body)
        err.print(f"demo task [bold]{body['name']}[/bold]: {task['id']}")
    _launch_demo_service(client, DEMO_SERVICE, "3 instances with an HTTP health check")
    _define_demo_job(client)
    _create_demo_teams(client, cluster.work_dir)
    if cluster.registry is None:
        err.print("no container demo: start with --registry for a local registry to push it to")
        return
    try:
        image = _push_demo_image(cluster.registry)
    except Exception as error:  # busybox missing, registry refusing: the rest of the demo runs
        err.print(f"no container demo: cannot build or push its image: {error}")
        return
    what = f"2 containers of {image}, bridged, port 80 mapped to a host port"
    _launch_demo_service(client, demo_container_service(image), what)


def _push_demo_image(registry: str) -> str:
    """busybox-static, a web page and httpd as the command, pushed to the local registry."""
    # Imported here: image building is for the demo only and `tessera` should start fast.
    from tessera.agent.images.build import (
        ContainerConfig,
        build_image,
        build_layer,
        busybox_entries,
        file,
    )
    from tessera.agent.images.push import push_image

    layers = [
        build_layer(busybox_entries()),
        build_layer([file("www/index.html", DEMO_CONTAINER_PAGE.encode())]),
    ]
    image = build_image(layers, config=ContainerConfig(cmd=DEMO_CONTAINER_CMD))
    push_image(registry, DEMO_IMAGE_REPOSITORY, image, DEMO_IMAGE_TAG)
    return f"{registry}/{DEMO_IMAGE_REPOSITORY}:{DEMO_IMAGE_TAG}"


def _launch_demo_service(
    client: MasterClient, service: dict[str, Any], what: str, timeout: float = 30.0
) -> None:
    """Deploy a demo service and print its addresses once its instances are healthy."""
    app_id = service["id"]
    # A restarted cluster still has it (apps are kept in the store): show it again.
    if not client.request("GET", "/v2/apps", params={"id": app_id})["apps"]:
        client.post("/v2/apps", service)
    err.print(f"demo service [bold]{app_id}[/bold]: {what} ...")
    deadline = time.monotonic() + timeout
    app = client.get(f"/v2/apps{app_id}")["app"]
    while app["tasksHealthy"] < app["instances"] and time.monotonic() < deadline:
        time.sleep(0.5)
        app = client.get(f"/v2/apps{app_id}")["app"]
    for task in app["tasks"]:
        err.print(f"  http://{task['host']}:{task['ports'][0]}/   ({task['state']})")
    if app["tasksHealthy"] < app["instances"]:
        err.print(f"  not all healthy yet: see `tessera app show {app_id}`")


def _create_demo_teams(client: MasterClient, work_dir: Path) -> None:
    """Two teams with quotas and a developer each: multi-tenancy in the first minute."""
    passwords = work_dir / "demo-users"
    lines = []
    for team, user in (("team-a", "alice"), ("team-b", "bob")):
        with contextlib.redirect_stdout(io.StringIO()):
            team_create(team, cpus=1.0, mem=1024.0, master=client.url)
        password = secrets.token_urlsafe(12)
        created = client.send("PUT", f"/acs/api/v1/users/{user}", json={"password": password})
        if created.status_code == 409:  # a restarted cluster keeps its users
            client.send("PATCH", f"/acs/api/v1/users/{user}", json={"password": password})
        client.send("PUT", f"/acs/api/v1/groups/{team}-developers/users/{user}")
        lines.append(f"{user} {password}")
        err.print(
            f"demo team [bold]{team}[/bold]: quota 1 cpu, 1 GiB; user [bold]{user}[/bold] "
            f"(a developer of /{team}; password in {passwords})"
        )
    write_private(passwords, "\n".join(lines) + "\n")
    err.print(
        f"  as alice: tessera login {client.url} -u alice --profile alice, then "
        "`tessera app list` shows /team-a only; back to admin: tessera profile use local"
    )


def _define_demo_job(client: MasterClient) -> None:
    job_id = DEMO_JOB["id"]
    # A restarted cluster keeps its jobs in the store.
    if not any(job["id"] == job_id for job in client.get("/v1/jobs")):
        client.post("/v1/jobs", DEMO_JOB)
    err.print(f"demo job [bold]{job_id}[/bold]: runs every minute (tessera job history {job_id})")


def _print_where_to_look(cluster: LocalCluster, detach: bool) -> None:
    url = cluster.master_url
    out.print(f"\n[bold green]Tessera is up[/bold green]: master at [bold]{url}[/bold]")
    out.print(f"  API docs     {url}/docs   (OpenAPI: {url}/openapi.json)")
    out.print(f"  agents       tessera agent list      ({url}/v1/agents)")
    out.print(f"  tasks        tessera task list       ({url}/v1/tasks)")
    out.print(f"  services     tessera app list        ({url}/v2/apps, Marathon's API)")
    out.print(f"  jobs         tessera job list        ({url}/v1/jobs, Metronome's API)")
    out.print(f"  capacity     {url}/v1/cluster/summary")
    if cluster.registry:
        out.print(f"  registry     {cluster.registry}   (plain HTTP, loopback only)")
    work_dir = cluster.work_dir
    out.print(
        f"  signed in    as admin (profile [bold]local[/bold]); password in "
        f"{work_dir / ADMIN_PASSWORD}, a token in {work_dir / ADMIN_TOKEN}"
    )
    out.print(
        f"  curl         curl --cacert {work_dir / 'ca.pem'} "
        f'-H "Authorization: token=$(tessera token)" {url}/v2/apps',
        soft_wrap=True,
    )
    out.print("  run a task   tessera run --wait -- echo hello")
    out.print(f"  logs         {cluster.work_dir}/*.log")
    if detach:
        out.print("  stop         tessera down\n")
    else:
        out.print("  stop         Ctrl-C\n")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
