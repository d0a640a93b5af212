"""`tessera`: the command line for people — local clusters, daemons, tasks."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli import apps, deployments, groups, jobs, login, quotas, tasks, teams
from tessera.cli.audit import audit
from tessera.cli.client import MasterClient, fail, print_json, read_token_file
from tessera.cli.join_tokens import agent_revoke, join_token_app
from tessera.cli.local import down, up
from tessera.cli.maintenance import agent_drain, agent_reactivate, drain_lines, rebalance_app
from tessera.cli.render import agents_table
from tessera.cli.simulate import simulate
from tessera.model.resources import (
    ResourceFormatError,
    Resources,
    parse_attributes,
    parse_resources,
)

app = typer.Typer(
    name="tessera",
    help="Tessera: a datacenter operating system. Start with `tessera up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
agent_app = typer.Typer(
    help="Run an agent (`tessera agent --master URL`) or list agents (`tessera agent list`).",
    invoke_without_command=True,
)
app.add_typer(agent_app, name="agent")
app.add_typer(rebalance_app, name="rebalance")
app.add_typer(join_token_app, name="join-token")
agent_app.command("revoke")(agent_revoke)
agent_app.command("drain")(agent_drain)
agent_app.command("reactivate")(agent_reactivate)
app.add_typer(tasks.task_app, name="task")
app.add_typer(apps.app_app, name="app")
app.add_typer(groups.group_app, name="group")
app.add_typer(deployments.deployment_app, name="deployment")
app.add_typer(jobs.job_app, name="job")
app.add_typer(quotas.quota_app, name="quota")
app.add_typer(teams.team_app, name="team")
app.add_typer(login.profile_app, name="profile")
app.command()(audit)
app.command()(login.login)
app.command()(login.token)
app.command("run", context_settings={"allow_interspersed_args": False})(tasks.run)

log = logging.getLogger("tessera")


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


MasterOption = Annotated[
    str | None, typer.Option("--master", help="Master URL (else TESSERA_MASTER, else local).")
]


@app.command()
def master(
    port: Annotated[int, typer.Option(envvar="TESSERA_PORT")] = 5050,
    work_dir: Annotated[Path, typer.Option(envvar="TESSERA_WORK_DIR")] = Path("master-data"),
    bind: Annotated[str, typer.Option(envvar="TESSERA_BIND")] = "127.0.0.1",
    store: Annotated[
        str,
        typer.Option(
            envvar="TESSERA_STORE",
            help="sqlite (default), sqlite:///path, or etcd://h1:2379,h2:2379,... for "
            "several masters (docs/etcd.md)",
        ),
    ] = "sqlite",
    heartbeat_interval: Annotated[
        float, typer.Option(envvar="TESSERA_HEARTBEAT_INTERVAL", min=0.05)
    ] = 5.0,
    max_missed_heartbeats: Annotated[
        int, typer.Option(envvar="TESSERA_MAX_MISSED_HEARTBEATS", min=1)
    ] = 3,
    reregistration_timeout: Annotated[
        float, typer.Option(envvar="TESSERA_REREGISTRATION_TIMEOUT", min=0)
    ] = 30.0,
    rebalance_interval: Annotated[
        float,
        typer.Option(
            envvar="TESSERA_REBALANCE_INTERVAL",
            min=0,
            help="seconds between automatic rebalances that free whole agents (0: off)",
        ),
    ] = 0.0,
    rebalance_cooldown: Annotated[
        float,
        typer.Option(
            envvar="TESSERA_REBALANCE_COOLDOWN",
            min=0,
            help="seconds before an instance a rebalance moved may be moved again",
        ),
    ] = 3600.0,
    rebalance_wave_timeout: Annotated[
        float,
        typer.Option(
            envvar="TESSERA_REBALANCE_WAVE_TIMEOUT",
            min=1,
            help="a rebalance wave unfinished after this many seconds stops the rebalance",
        ),
    ] = 600.0,
    unreachable_throttle_fraction: Annotated[
        float,
        typer.Option(
            envvar="TESSERA_UNREACHABLE_THROTTLE_FRACTION",
            min=0,
            max=1,
            help="stop replacing tasks on unreachable agents while more than this "
            "fraction of the agents is out of contact (1: never stop)",
        ),
    ] = 0.4,
    leader_lease: Annotated[
        int,
        typer.Option(
            envvar="TESSERA_LEADER_LEASE",
            min=2,
            help="etcd only: seconds a dead leader blocks the next one (failover time)",
        ),
    ] = 5,
    advertise_url: Annotated[
        str,
        typer.Option(
            envvar="TESSERA_ADVERTISE_URL",
            help="etcd only: the URL other masters and agents reach this master at "
            "(default http://<bind>:<port>)",
        ),
    ] = "",
    cluster_key: Annotated[
        Path | None,
        typer.Option(
            envvar="TESSERA_CLUSTER_KEY",
            help="file with the 32-byte key that seals the cluster's keys in the store; "
            "default: <work-dir>/cluster-key, created on first start. Several masters: give "
            "each the same file (docs/security.md)",
        ),
    ] = None,
    agent_port: Annotated[
        int,
        typer.Option(
            envvar="TESSERA_AGENT_PORT",
            help="the agent channel's mutual-TLS port (agents connect there once joined)",
        ),
    ] = 5052,
    agent_cert_lifetime: Annotated[
        float,
        typer.Option(
            envvar="TESSERA_AGENT_CERT_LIFETIME",
            min=1,
            help="seconds an agent certificate lasts (renewed at 2/3); default 30 days",
        ),
    ] = 30 * 86400.0,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            envvar="TESSERA_INSECURE_NO_AUTH",
            help="DEBUGGING ONLY: no authentication, every caller is a superuser; refused "
            "unless --bind is a loopback address",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="TESSERA_LOG_LEVEL")] = "info",
) -> None:
    """Run a master in the foreground until SIGTERM or Ctrl-C. With an etcd store it exits
    with code 75 when it loses the leadership; run it under a supervisor that restarts it."""
    from tessera.cli.daemons import run_master, setup_logging
    from tessera.master.config import MasterConfig
    from tessera.master.keys import ClusterKeyError

    setup_logging(log_level)
    if insecure_no_auth:
        if not is_loopback(bind):
            fail(
                f"--insecure-no-auth refuses to serve on {bind}: anyone who reaches the port "
                "could run anything. Bind to 127.0.0.1, or drop --insecure-no-auth.",
                code=2,
            )
        log.warning(
            "*** --insecure-no-auth: NO AUTHENTICATION. Every request is a superuser. "
            "For debugging on this machine only. ***"
        )
    config = MasterConfig(
        work_dir=work_dir.resolve(),
        port=port,
        bind=bind,
        store=store,
        heartbeat_interval=heartbeat_interval,
        max_missed_heartbeats=max_missed_heartbeats,
        reregistration_timeout=reregistration_timeout,
        unreachable_throttle_fraction=unreachable_throttle_fraction,
        leader_lease=leader_lease,
        advertise_url=advertise_url,
        cluster_key_file=cluster_key.resolve() if cluster_key is not None else None,
        insecure_no_auth=insecure_no_auth,
        agent_port=agent_port,
        agent_cert_lifetime=agent_cert_lifetime,
        rebalance_interval=rebalance_interval,
        rebalance_cooldown=rebalance_cooldown,
        rebalance_wave_timeout=rebalance_wave_timeout,
    )
    try:
        code = run_master(config, log_level.lower())
    except (OSError, ValueError, ClusterKeyError) as error:
        fail(f"master cannot start: {error}")
    if code:
        raise typer.Exit(code)


@agent_app.callback()
def agent(
    ctx: typer.Context,
    master: Annotated[
        str | None,
        typer.Option(envvar="TESSERA_MASTER", help="Master URL(s), comma-separated."),
    ] = None,
    work_dir: Annotated[Path, typer.Option(envvar="TESSERA_WORK_DIR")] = Path("agent-data"),
    resources: Annotated[
        str | None,
        typer.Option(envvar="TESSERA_RESOURCES", help='e.g. "cpus:4;mem:8192;ports:[31000-32000]"'),
    ] = None,
    attributes: Annotated[
        str | None, typer.Option(envvar="TESSERA_ATTRIBUTES", help='e.g. "zone:a;rack:r1"')
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option(
            envvar="TESSERA_JOIN_TOKEN",
            help="tsr1.<id>.<secret> from `tessera join-token create`; needed once, to join",
        ),
    ] = None,
    join_token_file: Annotated[Path | None, typer.Option(envvar="TESSERA_JOIN_TOKEN_FILE")] = None,
    ca_pin: Annotated[
        str | None,
        typer.Option(
            envvar="TESSERA_CA_PIN",
            help="sha256:<hex> of the cluster CA, checked before joining "
            "(`tessera join-token create` prints it)",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(envvar="TESSERA_CA_FILE", help="the cluster CA (PEM), instead of --ca-pin"),
    ] = None,
    hostname: Annotated[str | None, typer.Option(envvar="TESSERA_HOSTNAME")] = None,
    http_port: Annotated[int, typer.Option(envvar="TESSERA_HTTP_PORT")] = 0,
    task_user: Annotated[
        str | None, typer.Option(envvar="TESSERA_TASK_USER", help="Run tasks as this user.")
    ] = None,
    isolation: Annotated[
        str, typer.Option(envvar="TESSERA_ISOLATION", help="auto, cgroups or none")
    ] = "auto",
    kill_tasks_on_exit: Annotated[bool, typer.Option(envvar="TESSERA_KILL_TASKS_ON_EXIT")] = False,
    log_level: Annotated[str, typer.Option(envvar="TESSERA_LOG_LEVEL")] = "info",
    default_registry: Annotated[
        str,
        typer.Option(envvar="TESSERA_DEFAULT_REGISTRY", help="Registry of images named bare."),
    ] = "docker.io",
    docker_config: Annotated[
        Path | None,
        typer.Option(envvar="TESSERA_DOCKER_CONFIG", help="Registry credentials (config.json)."),
    ] = None,
    insecure_registries: Annotated[
        str,
        typer.Option(
            envvar="TESSERA_INSECURE_REGISTRIES", help="host[:port],... reached by plain HTTP."
        ),
    ] = "",
    image_pull_stall_timeout: Annotated[
        float, typer.Option(envvar="TESSERA_IMAGE_PULL_STALL_TIMEOUT", min=0.1)
    ] = 60.0,
    image_pull_timeout: Annotated[
        float, typer.Option(envvar="TESSERA_IMAGE_PULL_TIMEOUT", min=0.1)
    ] = 600.0,
    image_store_limit: Annotated[
        float | None,
        typer.Option(
            envvar="TESSERA_IMAGE_STORE_LIMIT", help="MiB for images (default: the disk's size)."
        ),
    ] = None,
    image_gc_delay: Annotated[float, typer.Option(envvar="TESSERA_IMAGE_GC_DELAY", min=0)] = 180.0,
    allow_privileged: Annotated[bool, typer.Option(envvar="TESSERA_ALLOW_PRIVILEGED")] = False,
    allowed_host_paths: Annotated[
        str,
        typer.Option(
            envvar="TESSERA_ALLOWED_HOST_PATHS",
            help="Host paths container volumes may mount, comma-separated.",
        ),
    ] = "",
    bridge: Annotated[str, typer.Option(envvar="TESSERA_BRIDGE")] = "tessera0",
    bridge_subnet: Annotated[str, typer.Option(envvar="TESSERA_BRIDGE_SUBNET")] = "10.232.0.0/24",
    task_uid_first: Annotated[
        int,
        typer.Option(
            envvar="TESSERA_TASK_UID_FIRST",
            help="First uid of the per-role task users (docs/task-users.md).",
        ),
    ] = 1879048192,
    task_uid_count: Annotated[
        int,
        typer.Option(
            envvar="TESSERA_TASK_UID_COUNT", help="How many uids the per-role task users may take."
        ),
    ] = 65536,
) -> None:
    """Run an agent in the foreground: it dials the master and runs tasks."""
    if ctx.invoked_subcommand is not None:
        return
    from tessera.agent.config import AgentConfig
    from tessera.agent.detect import detect_hostname, detect_resources
    from tessera.cli.daemons import serve_agent, setup_logging

    if not master:
        fail("--master URL (or TESSERA_MASTER) is required to run an agent")
    token = join_token or ""
    if join_token_file is not None:
        token = read_token_file(join_token_file)
    from tessera.agent.join import credentials

    if not token and not credentials(work_dir.resolve()).exists():
        fail(
            "this agent has not joined the cluster yet: give it a join token "
            "(`tessera join-token create`) with --join-token or --join-token-file, "
            "and the CA pin it prints with --ca-pin"
        )
    if isolation not in ("auto", "cgroups", "none"):
        fail("--isolation must be auto, cgroups or none")
    work_dir = work_dir.resolve()
    try:
        detected = detect_resources(work_dir)
        if image_store_limit:
            # The image store shares the work dir's disk: what it may hold is not offered.
            disk = max(0.0, detected.disk - image_store_limit)
            detected = Resources(detected.cpus, detected.mem, disk, detected.gpus, detected.ports)
        offered = parse_resources(resources, base=detected) if resources else detected
        attrs = parse_attributes(attributes) if attributes else {}
    except ResourceFormatError as error:
        fail(str(error))
    host = hostname or detect_hostname()
    setup_logging(log_level)
    config = AgentConfig(
        masters=tuple(url.strip() for url in master.split(",") if url.strip()),
        work_dir=work_dir,
        join_token=token,
        resources=offered,
        attributes=attrs,
        hostname=host,
        http_bind=host if hostname else "127.0.0.1",
        http_port=http_port,
        task_user=task_user,
        isolation=isolation,
        kill_tasks_on_exit=kill_tasks_on_exit,
        default_registry=default_registry,
        docker_config=docker_config.resolve() if docker_config else None,
        insecure_registries=_csv(insecure_registries),
        image_pull_stall_timeout=image_pull_stall_timeout,
        image_pull_timeout=image_pull_timeout,
        image_store_limit_mib=image_store_limit,
        image_gc_delay=image_gc_delay,
        allow_privileged=allow_privileged,
        allowed_host_paths=_csv(allowed_host_paths),
        bridge=bridge,
        bridge_subnet=bridge_subnet,
        task_uid_first=task_uid_first,
        task_uid_count=task_uid_count,
        ca_pin=ca_pin,
        ca_file=ca_file.resolve() if ca_file else None,
    )
    try:
        code = asyncio.run(serve_agent(config))
    except OSError as error:
        fail(f"agent cannot start: {error}")
    raise typer.Exit(code)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@agent_app.command("list")
def agent_list(
    master: MasterOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the agents the master knows."""
    data = MasterClient(master).get("/v1/agents")
    if json_output:
        print_json(data["agents"])
    else:
        agents_table(data["agents"])


@agent_app.command("show")
def agent_show(
    agent_id: str,
    master: MasterOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one agent."""
    data = MasterClient(master).get(f"/v1/agents/{agent_id}")
    if json_output:
        print_json(data)
    else:
        agents_table([data])
        if data.get("drain"):
            drain_lines(data)


app.command()(up)
app.command()(down)
app.command()(simulate)


def main() -> None:
    app(prog_name="tessera")


if __name__ == "__main__":
    main()
