"""Several real `tessera master` processes on one etcd, plus agents dialling all of them."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path
from typing import Any

import httpx

from tessera.testing.auth import auth_headers
from tessera.testing.cluster import Daemon, free_ports, trusting_nothing_yet, wait_for


class MasterGroup:
    """`size` masters sharing `store` (an etcd:// URL) and one join token; stopped at the end.

    Masters exit when they lose the leadership (their supervisor's job is to start them
    again): `restart(i)` plays the supervisor."""

    def __init__(
        self,
        root: Path,
        store: str,
        size: int = 3,
        lease: int = 3,
        heartbeat_interval: float = 0.5,
        misses: int = 6,
    ) -> None:
        self.root = root
        self.store = store
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.misses = misses
        ports = free_ports(2 * size)
        self.ports, self.agent_ports = ports[:size], ports[size:]
        self.urls = [f"https://127.0.0.1:{port}" for port in self.ports]
        self.masters: list[Daemon | None] = [None] * size
        self.agents: list[Daemon] = []
        # Trusts the cluster CA (one for every master) once the first master has written it.
        self.ssl_context = trusting_nothing_yet()
        self._trusted = False
        self.http = httpx.Client(timeout=5, verify=self.ssl_context)
        root.mkdir(parents=True, exist_ok=True)
        # Join tokens and the CA are in etcd: any leader accepts the agents. One token.
        self._join: tuple[str, str] | None = None
        # Every master opens the cluster's keys in etcd with the same cluster key.
        self.cluster_key_file = root / "cluster-key"
        self.cluster_key_file.write_text(secrets.token_bytes(32).hex() + "\n")
        self.cluster_key_file.chmod(0o600)

    def start(self) -> MasterGroup:
        for index in range(len(self.urls)):
            self.start_master(index)
        return self

    def start_master(self, index: int) -> Daemon:
        work_dir = self.root / f"master-{index}"
        work_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "master",
            "--port",
            str(self.ports[index]),
            "--work-dir",
            str(work_dir),
            "--store",
            self.store,
            "--leader-lease",
            str(self.lease),
            "--advertise-url",
            self.urls[index],
            "--heartbeat-interval",
            str(self.heartbeat_interval),
            "--max-missed-heartbeats",
            str(self.misses),
            "--reregistration-timeout",
            "30",
            "--cluster-key",
            str(self.cluster_key_file),
            "--agent-port",
            str(self.agent_ports[index]),
        ]
        daemon = Daemon(f"master-{index}", args, self.root / f"master-{index}.log").start()
        self.masters[index] = daemon
        ca_file = work_dir / "tls" / "ca.crt"
        wait_for(ca_file.exists, 30, f"master-{index}'s CA certificate")
        if not self._trusted:
            self.ssl_context.load_verify_locations(cafile=ca_file)
            self._trusted = True
        wait_for(lambda: self._pings(index), 20, f"master-{index} /ping")
        return daemon

    @property
    def ca_file(self) -> Path:
        """The cluster CA's certificate (every master writes the same one)."""
        for index in range(len(self.urls)):
            path = self.root / f"master-{index}" / "tls" / "ca.crt"
            if path.exists():
                return path
        raise FileNotFoundError("no master has written the cluster CA yet")

    def restart(self, index: int) -> Daemon:
        daemon = self.masters[index]
        if daemon is not None and daemon.process is not None:
            daemon.process.wait(20)
        return self.start_master(index)

    def _authorize(self) -> bool:
        """Carry the superuser's token, once the first leader has written one."""
        if "authorization" in self.http.headers:
            return True
        for index in range(len(self.urls)):
            token_file = self.root / f"master-{index}" / "admin-token"
            if token_file.exists():
                self.http.headers.update(auth_headers(token_file.parent))
                return True
        return False

    @property
    def headers(self) -> dict[str, str]:
        wait_for(self._authorize, 30, "a leader's admin token")
        return {"Authorization": self.http.headers["authorization"]}

    def _pings(self, index: int) -> bool:
        try:
            return self.http.get(self.urls[index] + "/ping").status_code == 200
        except httpx.HTTPError:
            return False

    def leader_seen_by(self, index: int) -> dict[str, Any] | None:
        if not self._authorize():
            return None
        try:
            response = self.http.get(self.urls[index] + "/v1/leader", timeout=2)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        found: dict[str, Any] = response.json()
        return found

    def leader(self, among: list[int] | None = None) -> int | None:
        """The index of the master that says it leads and is named by every other one asked."""
        asked = among if among is not None else list(range(len(self.urls)))
        views = {index: self.leader_seen_by(index) for index in asked}
        leaders = [i for i, view in views.items() if view is not None and view["self"]]
        if len(leaders) != 1:
            return None
        url = self.urls[leaders[0]]
        if any(view is None or view["url"] != url for view in views.values()):
            return None
        return leaders[0]

    def wait_leader(self, among: list[int] | None = None, timeout: float = 20.0) -> int:
        found: int = wait_for(
            lambda: (index := self.leader(among)) is not None and index + 1,
            timeout,
            "one master to lead",
        )
        return found - 1

    def url_of_leader(self) -> str:
        return self.urls[self.wait_leader(self.running())]

    def running(self) -> list[int]:
        return [
            index
            for index, daemon in enumerate(self.masters)
            if daemon is not None and daemon.process is not None and daemon.process.poll() is None
        ]

    def start_agent(
        self,
        name: str = "agent-1",
        resources: str = "cpus:8;mem:8192;disk:1000;ports:[31000-31999]",
        masters: list[str] | None = None,
    ) -> Daemon:
        """An agent dialling `masters` (default: every master, in order)."""
        args = [
            "agent",
            "--master",
            ",".join(masters or self.urls),
            "--work-dir",
            str(self.root / name),
            *self.join_args(),
            "--hostname",
            "127.0.0.1",
            "--resources",
            resources,
            "--kill-tasks-on-exit",
        ]
        agent = Daemon(name, args, self.root / f"{name}.log").start()
        self.agents.append(agent)
        wait_for(lambda: self.agent_registered(name), 30, f"{name} to register")
        return agent

    def join_args(self) -> list[str]:
        """One multi-use join token for every agent, minted through the leader's API."""
        if self._join is None:

            def mint() -> dict[str, Any] | None:
                try:
                    response = self.http.post(
                        self.url_of_leader() + "/v1/join-tokens",
                        json={"ttl": 86400, "uses": 1000},
                        headers=self.headers,
                    )
                except httpx.HTTPError:
                    return None
                return response.json() if response.status_code == 201 else None

            body = wait_for(mint, 30, "a join token")
            self._join = (str(body["token"]), str(body["caPin"]))
        return ["--join-token", self._join[0], "--ca-pin", self._join[1]]

    @property
    def token(self) -> str:
        """The agents' join token (simulated agents join with it too)."""
        return self.join_args()[1]

    def agent_registered(self, name: str, url: str | None = None) -> bool:
        agent_id_file = self.root / name / "agent-id"
        if not agent_id_file.exists():
            return False
        agent_id = agent_id_file.read_text().strip()
        try:
            response = self.http.get((url or self.url_of_leader()) + "/v1/agents")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        agents = response.json()["agents"]
        return any(a["id"] == agent_id and a["state"] == "ACTIVE" for a in agents)

    def get(self, path: str, url: str | None = None) -> Any:
        response = self.http.get((url or self.url_of_leader()) + path)
        response.raise_for_status()
        return response.json()

    def logs(self) -> str:
        parts = []
        for daemon in [*self.masters, *self.agents]:
            if daemon is not None and daemon.log_path.exists():
                parts.append(f"==== {daemon.name}\n{daemon.log()[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for daemon in self.masters:
            if daemon is not None:
                daemon.signal(signal.SIGCONT)  # a paused master cannot stop
                daemon.stop()
        self.http.close()
