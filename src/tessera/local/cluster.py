"""`tessera up` / `tessera down`: a master and N agents as processes on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tessera.agent.detect import detect_resources
from tessera.local.paths import STATE_FILE, current_pointer, read_cluster_state
from tessera.local.registry import RegistryUnavailable, start_registry
from tessera.master.auth_files import ADMIN_PASSWORD, ADMIN_TOKEN
from tessera.model.resources import DEFAULT_PORT_RANGE, PortRange, Resources
from tessera.security.ca import cli_client_context

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ClusterError(Exception):
    """The local cluster could not be started or stopped; the message says why."""


@dataclass
class LocalCluster:
    work_dir: Path
    master_url: str
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid
    registry: str | None = None  # host:port of `--registry`

    def save(self) -> None:
        state = {
            "master_url": self.master_url,
            "registry": self.registry,
            "work_dir": str(self.work_dir),
            "processes": self.processes,
            "started_at": time.time(),
        }
        temporary = self.work_dir / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        os.replace(temporary, self.work_dir / STATE_FILE)
        pointer = current_pointer()
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(self.work_dir))


def split_ports(count: int, ports: PortRange | None = None) -> list[PortRange]:
    """Divide one port range into `count` disjoint slices, so no two agents share a port."""
    whole = ports or PortRange(*DEFAULT_PORT_RANGE)
    size = len(whole) // count
    if size < 1:
        raise ClusterError(f"cannot split ports {whole.begin}-{whole.end} among {count} agents")
    return [
        PortRange(whole.begin + i * size, whole.begin + (i + 1) * size - 1) for i in range(count)
    ]


def agent_resources(count: int, work_dir: Path, override: Resources | None) -> list[Resources]:
    machine = detect_resources(work_dir)
    slices = split_ports(count)
    shares = []
    for index in range(count):
        base = override or Resources(
            cpus=round(machine.cpus / count, 3),
            mem=float(int(machine.mem / count)),
            disk=float(int(machine.disk / count)),
            gpus=0,
        )
        ports = base.ports if (override and override.ports) else (slices[index],)
        shares.append(Resources(base.cpus, base.mem, base.disk, base.gpus, ports))
    return shares


def _spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 (handed to the child)
    # Each daemon gets its own session, so Ctrl-C in the terminal reaches only `tessera up`,
    # which then stops agents before the master, in order.
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_cluster(
    work_dir: Path,
    agents: int,
    port: int,
    agent_override: Resources | None = None,
    heartbeat_interval: float = 2.0,
    registry_port: int | None = None,
) -> LocalCluster:
    """Start a master, `agents` agents and, with `registry_port`, a registry on loopback.

    Agent N gets the address 127.0.0.<N+1>, a slice of the port range, and its own
    container bridge `tessera<N>` on 10.232.<N>.0/24, so agents never collide."""
    work_dir = work_dir.resolve()
    existing = read_cluster_state(work_dir)
    if existing and _any_alive(existing):
        raise ClusterError(
            f"a local cluster already runs from {work_dir} ({existing.get('master_url')}); "
            f"stop it with `tessera down --work-dir {work_dir}`"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    master_dir = work_dir / "master"
    master_url = f"https://127.0.0.1:{port}"
    cluster = LocalCluster(work_dir, master_url)
    master = _spawn(
        [
            "master",
            "--port",
            str(port),
            "--agent-port",
            str(_free_port()),
            "--work-dir",
            str(master_dir),
            "--heartbeat-interval",
            str(heartbeat_interval),
            "--log-level",
            "warning",
        ],
        work_dir / "master.log",
    )
    cluster.processes["master"] = master.pid
    cluster.save()
    try:
        _wait_until(
            lambda: _pings(master_url, master_dir) or master.poll() is not None,
            START_TIMEOUT,
            "the master",
        )
        if master.poll() is not None:
            raise ClusterError(f"the master exited at start; see {work_dir / 'master.log'}")
        link_credentials(work_dir, master_dir)
        # The contract for scripts and clients: the CA to trust is `<work dir>/ca.pem`.
        shutil.copyfile(master_ca(master_dir), work_dir / "ca.pem")
        insecure: list[str] = []
        if registry_port is not None:
            try:
                registry = start_registry(work_dir, registry_port, work_dir / "registry.log")
            except RegistryUnavailable as error:
                raise ClusterError(str(error)) from None
            cluster.processes["registry"] = registry.pid
            cluster.registry = f"127.0.0.1:{registry_port}"
            insecure.append(cluster.registry)
            cluster.save()
        _wait_until((master_dir / ADMIN_TOKEN).exists, START_TIMEOUT, "the superuser's token")
        for index, resources in enumerate(agent_resources(agents, work_dir, agent_override)):
            name = f"agent-{index + 1}"
            # Through the same path as production: a one-time join token and the CA pin.
            token, pin = mint_join_token(master_url, master_dir, work_dir)
            # Each local agent gets its own loopback address (127.0.0.2, ...), so that tasks on
            # different agents look like different hosts to constraints and to each other.
            host = f"127.0.0.{index + 2}"
            process = _spawn(
                [
                    "agent",
                    "--master",
                    master_url,
                    "--work-dir",
                    str(work_dir / name),
                    "--join-token",
                    token,
                    "--ca-pin",
                    pin,
                    "--hostname",
                    host,
                    "--resources",
                    _flag(resources),
                    "--attributes",
                    f"local:{name}",
                    "--kill-tasks-on-exit",
                    "--bridge",
                    f"tessera{index + 1}",
                    "--bridge-subnet",
                    f"10.232.{index + 1}.0/24",
                    "--insecure-registries",
                    ",".join(insecure),
                    "--log-level",
                    "warning",
                ],
                work_dir / f"{name}.log",
            )
            cluster.processes[name] = process.pid
        cluster.save()
        _wait_until(
            lambda: _active_agents(master_url, master_dir) >= agents,
            START_TIMEOUT,
            f"{agents} agents to register",
        )
    except BaseException:
        stop_cluster(work_dir)
        raise
    return cluster


def link_credentials(work_dir: Path, master_dir: Path) -> None:
    """`D/admin-token` and `D/admin-password`: the master keeps them current in its own
    work dir (0600); links let scripts find them at the documented place."""
    for name in (ADMIN_TOKEN, ADMIN_PASSWORD):
        link = work_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(master_dir.name) / name)


def _flag(resources: Resources) -> str:
    ports = ",".join(f"{r.begin}-{r.end}" for r in resources.ports)
    return (
        f"cpus:{resources.cpus};mem:{resources.mem:g};disk:{resources.disk:g};"
        f"gpus:{resources.gpus};ports:[{ports}]"
    )


def master_ca(master_dir: Path) -> Path:
    """The cluster CA's certificate, written by the master before it serves HTTPS."""
    return master_dir / "tls" / "ca.crt"


def _trust(master_dir: Path) -> ssl.SSLContext:
    return cli_client_context(master_ca(master_dir))


def _pings(url: str, master_dir: Path) -> bool:
    if not master_ca(master_dir).exists():
        return False
    try:
        return httpx.get(url + "/ping", timeout=1, verify=_trust(master_dir)).status_code == 200
    except (httpx.HTTPError, OSError, ssl.SSLError):
        return False


def mint_join_token(url: str, master_dir: Path, work_dir: Path) -> tuple[str, str]:
    """A one-time join token and the CA pin; the CA goes to `<work dir>/ca.pem` (a contract:
    clients of the local cluster trust it from there)."""
    token = (master_dir / ADMIN_TOKEN).read_text().strip()
    headers = {"Authorization": f"token={token}"}
    body = {"ttl": 600, "uses": 1, "description": "tessera up"}
    try:
        trust = _trust(master_dir)
        created = httpx.post(
            url + "/v1/join-tokens", json=body, headers=headers, timeout=10, verify=trust
        )
        created.raise_for_status()
        ca = httpx.get(url + "/ca/dcos-ca.crt", timeout=10, verify=trust)
        ca.raise_for_status()
    except httpx.HTTPError as error:
        raise ClusterError(f"cannot mint a join token for the local agents: {error}") from None
    (work_dir / "ca.pem").write_bytes(ca.content)
    return str(created.json()["token"]), str(created.json()["caPin"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _active_agents(url: str, master_dir: Path) -> int:
    try:
        token = (master_dir / ADMIN_TOKEN).read_text().strip()
        headers = {"Authorization": f"token={token}"}
        trust = _trust(master_dir)
        answer = httpx.get(url + "/v1/agents", timeout=2, headers=headers, verify=trust)
        agents = answer.json()["agents"]
    except (httpx.HTTPError, KeyError, ValueError, OSError, ssl.SSLError):
        return 0
    return sum(1 for agent in agents if agent["state"] == "ACTIVE")


def _processes(state: dict[str, object]) -> dict[str, int]:
    processes = state.get("processes")
    if not isinstance(processes, dict):
        return {}
    return {str(name): int(pid) for name, pid in processes.items()}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _any_alive(state: dict[str, object]) -> bool:
    return any(_alive(pid) for pid in _processes(state).values())


def stop_cluster(work_dir: Path) -> list[str]:
    """Stop agents (which kill their tasks), then the master; returns what was stopped."""
    work_dir = work_dir.resolve()
    state = read_cluster_state(work_dir)
    if state is None:
        raise ClusterError(f"no local cluster was started from {work_dir}")
    processes = _processes(state)
    agents = {name: pid for name, pid in processes.items() if name.startswith("agent")}
    stopped = _terminate(agents)
    for name in ("master", "registry"):
        if name in processes:
            stopped += _terminate({name: processes[name]})
    (work_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _terminate(processes: dict[str, int]) -> list[str]:
    live: dict[str, psutil.Process] = {}
    for name, pid in processes.items():
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            live[name] = process
        except psutil.NoSuchProcess:
            continue
    _, still_running = psutil.wait_procs(list(live.values()), timeout=STOP_TIMEOUT)
    for process in still_running:
        # Kill what ignored SIGTERM, with everything in its session.
        for child in process.children(recursive=True):
            child.kill()
        process.kill()
    psutil.wait_procs(still_running, timeout=5)
    return sorted(live)
