"""Master settings; every field is a `tessera master` flag and a `TESSERA_<FLAG>` variable."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MasterConfig:
    work_dir: Path
    port: int = 5050
    bind: str = "127.0.0.1"
    store: str = "sqlite"
    heartbeat_interval: float = 5.0
    # An agent that misses this many heartbeats in a row is marked unreachable.
    max_missed_heartbeats: int = 3
    # After a master restart, agents get this long to re-register before the liveness
    # check may mark them unreachable.
    reregistration_timeout: float = 30.0
    # How often queued tasks are retried against the cluster when nothing else wakes the
    # planner (a new agent or a finished task wakes it at once).
    placement_retry_interval: float = 2.0
    # When more than this fraction of the agents is out of contact at once, tasks on
    # unreachable agents are not replaced until enough agents are back (1 turns it off).
    unreachable_throttle_fraction: float = 0.4
    # With an etcd store: seconds etcd keeps a dead leader's key, so roughly how long a
    # failover takes (see docs/etcd.md, "The election and its timeouts").
    leader_lease: int = 5
    # The URL other masters forward requests to and agents are pointed at; empty means
    # https://<bind>:<port> (the host's name when bound to every interface; http:// only
    # with --insecure-no-auth, which serves plain HTTP on loopback).
    advertise_url: str = ""
    # Debugging only: every caller is a superuser. Refused unless bound to loopback.
    insecure_no_auth: bool = False
    # The file holding the key that seals the cluster's keys in the store; None: the work
    # dir's `cluster-key`, created on first start (a lone master). Several masters: the same
    # file for each.
    cluster_key_file: Path | None = None
    # The agent channel's mutual-TLS listener (master/agent_listener.py); 0: any free port.
    agent_port: int = 5052
    # Seconds an agent's certificates last (renewed at 2/3); short only in tests.
    agent_cert_lifetime: float = 30 * 86400.0
    # Seconds between automatic rebalances (`tessera rebalance` on a timer); 0: off.
    rebalance_interval: float = 0.0
    # An instance moved by a rebalance is not moved again for this many seconds.
    rebalance_cooldown: float = 3600.0
    # A rebalance wave that has not finished after this many seconds stops the rebalance.
    rebalance_wave_timeout: float = 600.0

    @property
    def url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = socket.getfqdn() if self.bind in ("", "0.0.0.0", "::") else self.bind
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def scheme(self) -> str:
        """The API is HTTPS with the cluster CA; the loopback-only debugging mode stays plain."""
        return "http" if self.insecure_no_auth else "https"
