"""Real master and agent processes on loopback, for integration tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tessera.master.auth_files import ADMIN_TOKEN
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.testing.auth import admin_token, auth_headers
from tessera.testing.sandbox import SandboxAccess, sandbox_access


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on loopback now: the probes stay bound until all are
    chosen, so two calls in a row cannot hand out the same port twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def tessera_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera", *args]


@dataclass
class Daemon:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # Runs the command through this (e.g. `ip netns exec NAME`, see testing/netns.py).
    wrapper: list[str] = field(default_factory=list)

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*self.wrapper, *tessera_command(*self.args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """A master plus agents, each a real `tessera` process; everything is stopped at the end."""

    def __init__(
        self, root: Path, heartbeat_interval: float = 0.5, misses: int = 3, insecure: bool = False
    ) -> None:
        """`insecure`: a master with --insecure-no-auth (plain HTTP on loopback, no auth)."""
        self.root = root
        self.port, self.agent_port = free_ports(2)
        self.insecure = insecure
        self.url = f"{'http' if insecure else 'https'}://127.0.0.1:{self.port}"
        self.heartbeat_interval = heartbeat_interval
        self.misses = misses
        self.master: Daemon | None = None
        self.agents: list[Daemon] = []
        # Trusts the cluster CA only, once the master has made it (start_master loads it):
        # give it to your own clients (`httpx.Client(verify=cluster.ssl_context)`).
        self.ssl_context = trusting_nothing_yet()
        self.http = httpx.Client(base_url=self.url, timeout=10, verify=self.ssl_context)
        # One multi-use join token per cluster (and the CA pin), minted through the API.
        self._join: tuple[str, str] | None = None

    @property
    def ca_file(self) -> Path:
        """The cluster CA's certificate (the master writes it before it serves HTTPS)."""
        return self.root / "master" / "tls" / "ca.crt"

    @property
    def channel_url(self) -> str:
        """The master's agent channel (mutual TLS, `--agent-port`)."""
        return f"wss://127.0.0.1:{self.agent_port}{AGENT_STREAM_PATH}"

    def join_token(self, uses: int = 1000, ttl: float = 86400.0) -> tuple[str, str]:
        """A join token and the CA pin to go with it (`tessera join-token create`)."""
        response = self.http.post("/v1/join-tokens", json={"ttl": ttl, "uses": uses})
        assert response.status_code == 201, response.text
        body = response.json()
        return str(body["token"]), str(body["caPin"])

    def join_args(self) -> list[str]:
        if self._join is None:
            self._join = self.join_token()
        token, pin = self._join
        return ["--join-token", token, "--ca-pin", pin]

    def start_master(
        self, reregistration_timeout: float = 30.0, extra: list[str] | None = None
    ) -> Daemon:
        """Start the master; `extra` adds flags (e.g. `--bind 0.0.0.0` for agents in
        network namespaces)."""
        self.master = Daemon(
            "master",
            [
                "master",
                "--port",
                str(self.port),
                "--work-dir",
                str(self.root / "master"),
                "--heartbeat-interval",
                str(self.heartbeat_interval),
                "--max-missed-heartbeats",
                str(self.misses),
                "--reregistration-timeout",
                str(reregistration_timeout),
                "--agent-port",
                str(self.agent_port),
                *(["--insecure-no-auth"] if self.insecure else []),
                *(extra or []),
            ],
            self.root / "master.log",
        ).start()
        if not self.insecure:
            wait_for(self.ca_file.exists, 20, "the cluster CA")
            self.ssl_context.load_verify_locations(cafile=self.ca_file)
        wait_for(self._pings, 20, "master /ping")
        # The master leaves its superuser's token in its work dir when it starts leading.
        token_file = self.root / "master" / ADMIN_TOKEN
        wait_for(token_file.exists, 20, "the master's admin token")
        self.http.headers.update(auth_headers(self.root / "master"))
        return self.master

    def _pings(self) -> bool:
        try:
            return self.http.get("/ping").status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def token(self) -> str:
        """The superuser's token (for other clients: `Authorization: token=<it>`)."""
        return admin_token(self.root / "master")

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.root / "master")

    def agent_args(
        self, name: str, resources: str, host: str = "127.0.0.1", master: str | None = None
    ) -> list[str]:
        """An agent joining with the cluster's join token and CA pin (`master`: another URL
        to dial than the master's, e.g. testing.flaky_proxy for an agent that has joined)."""
        return [
            "agent",
            "--master",
            master or self.url,
            "--work-dir",
            str(self.root / name),
            *self.join_args(),
            "--hostname",
            host,
            "--resources",
            resources,
            "--kill-tasks-on-exit",
        ]

    def start_agent(
        self,
        name: str = "agent-1",
        resources: str = "cpus:2;mem:2048;disk:1000;ports:[31000-31099]",
        host: str = "127.0.0.1",
        wait: bool = True,
        extra: list[str] | None = None,
        master: str | None = None,
        wrapper: list[str] | None = None,
    ) -> Daemon:
        """Start an agent; `master` dials another URL than the master's (e.g. a proxy);
        `wrapper` runs it through a command (e.g. into a network namespace)."""
        args = self.agent_args(name, resources, host, master) + (extra or [])
        agent = Daemon(name, args, self.root / f"{name}.log", wrapper=wrapper or []).start()
        self.agents.append(agent)
        if wait:
            wait_for(lambda: self.agent_registered(name), 20, f"{name} to register")
        return agent

    def agent_registered(self, name: str) -> bool:
        agent_id_file = self.root / name / "agent-id"
        if not agent_id_file.exists():
            return False
        agent_id = agent_id_file.read_text().strip()
        agents = self.get("/v1/agents")["agents"]
        return any(a["id"] == agent_id and a["state"] == "ACTIVE" for a in agents)

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.http.get(path, **kwargs)
        response.raise_for_status()
        return response.json()

    def sandbox(self, task_id: str) -> SandboxAccess:
        """The superuser's grant to the task's sandbox on its agent (HTTPS, CA trusted)."""
        return sandbox_access(self.http, task_id, self.ssl_context)

    def launch(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.get(f"/v1/tasks/{task_id}")
        return task

    def wait_state(self, task_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (t := self.task(task_id))["state"] in states and t,
            timeout,
            f"{task_id} to reach {states}",
        )
        return found

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            tessera_command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                **os.environ,
                "TESSERA_MASTER": self.url,
                "TESSERA_HOME": str(self.root),
                "TESSERA_TOKEN": self.token,
                "TESSERA_CA": str(self.ca_file),
            },
        )

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.master is not None:
            self.master.stop()
        self.http.close()


def trusting_nothing_yet() -> ssl.SSLContext:
    """A client context that checks host names and trusts no CA until one is loaded into it
    (`load_verify_locations`): clients made before the cluster's CA exists use it after."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def task_processes(task_id: str) -> list[psutil.Process]:
    """Every live process whose environment carries this task's ID."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("MESOS_TASK_ID") == task_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def settled_task_processes(task_id: str, timeout: float = 20.0) -> list[psutil.Process]:
    """The task's processes once its tree has settled: a task's tree grows for a moment
    after TASK_RUNNING (the wrapper starts the command), so two looks half a second apart
    must find the same, non-empty set of pids."""

    def settled() -> list[psutil.Process] | None:
        first = task_processes(task_id)
        time.sleep(0.5)
        again = task_processes(task_id)
        same = {p.pid for p in first} == {p.pid for p in again}
        return again if again and same else None

    found: list[psutil.Process] = wait_for(settled, timeout, f"the processes of {task_id}")
    return found


def task_trees(task_id: str) -> list[psutil.Process]:
    """The roots of the task's process trees: one per launch of it."""
    processes = task_processes(task_id)
    pids = {p.pid for p in processes}
    return [p for p in processes if p.ppid() not in pids]


def live_task_ids(prefix: str) -> set[str]:
    """IDs starting with `prefix` of every task with a live process on this machine."""
    live = set()
    for process in psutil.process_iter():
        try:
            task_id = process.environ().get("MESOS_TASK_ID", "")
        except psutil.Error:
            continue
        if task_id.startswith(prefix):
            live.add(task_id)
    return live
