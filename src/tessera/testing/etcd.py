"""Real etcd servers on loopback for tests and the fault suite: one node or a cluster.

Each member gets free client and peer ports and a data directory under the given root;
`stop()` ends every process that was started. Fast raft timings (50 ms heartbeat, 500 ms
election) allow one-second leases, so failover tests stay short.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from tessera.testing.cluster import free_ports, wait_for

MISSING_REASON = (
    "etcd binary not found: `make` installs it as root (apt-get install etcd-server), "
    "or put an etcd >= 3.4 on PATH"
)
# What the docs ask of production etcd too, so that large master batches fit one transaction.
MAX_TXN_OPS = 10000
MAX_REQUEST_BYTES = 32 * 1024 * 1024


def etcd_binary() -> str | None:
    return shutil.which("etcd") or next(
        (path for path in ("/usr/bin/etcd", "/usr/local/bin/etcd") if os.access(path, os.X_OK)),
        None,
    )


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    initial_cluster: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_suffix(".log")

    def command(self) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError(MISSING_REASON)
        client_url = f"http://{self.endpoint}"
        return [
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=tessera-test",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            f"--max-txn-ops={MAX_TXN_OPS}",
            f"--max-request-bytes={MAX_REQUEST_BYTES}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def start(self) -> EtcdMember:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        try:
            answer = httpx.get(f"http://{self.endpoint}/health", timeout=1.0)
            return answer.status_code == 200 and answer.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class EtcdCluster:
    """`size` members on loopback; use as a context manager or call start() and stop()."""

    def __init__(self, root: Path, size: int = 1) -> None:
        self.root = root
        ports = iter(free_ports(2 * size))
        self.members = [
            EtcdMember(f"etcd{i}", next(ports), next(ports), root / f"etcd{i}")
            for i in range(1, size + 1)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def url(self) -> str:
        """For open_store and `tessera master --store`."""
        return "etcd://" + ",".join(self.endpoints) + f"?max_txn_ops={MAX_TXN_OPS}"

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            member.start()
        try:
            for member in self.members:
                self.wait_healthy(member, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, member: EtcdMember, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not member.running:
                raise RuntimeError(f"{member.name} exited:\n{member.log()[-3000:]}")
            return member.healthy()

        wait_for(ready, timeout, f"{member.name} to be healthy")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
