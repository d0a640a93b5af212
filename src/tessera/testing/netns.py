"""Hosts as Linux network namespaces, for fault tests that cut a machine off the network.

Each host is a namespace joined to the root namespace by a veth pair on its own /30 from
10.231.0.0/16: the root side gets .1, the namespace side .2. A process started with
`host.command(...)` sees only its loopback and that link, so
`cut()` (the root side down) partitions it from everything, and `heal()` brings it back.
Needs root and iproute2; `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "tessera"
_SUBNETS = ipaddress.ip_network("10.231.0.0/16")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class NetnsHost:
    """One namespace and its veth pair; `create()` sets both up, `destroy()` removes them."""

    name: str
    outer: str  # the veth end in the root namespace
    host_address: str  # the root side's address: what the namespace dials to reach us
    address: str  # the namespace side's address

    def create(self) -> NetnsHost:
        inner = "eth0"
        try:
            _ip("netns", "add", self.name)
            _ip(
                "link", "add", self.outer, "type", "veth", "peer", "name", inner, "netns", self.name
            )
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", inner)
            _ip("-n", self.name, "link", "set", inner, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as error:
            self.destroy()
            raise OSError(f"cannot set up {self.name}: {error.stderr.strip()}") from error
        return self

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace; both tools replace themselves with it. nsenter
        changes only the network namespace; `ip netns exec` also remounts /sys, which hides
        the cgroup hierarchy (an agent there would run its tasks without cgroups)."""
        if shutil.which("nsenter"):
            return ["nsenter", f"--net=/run/netns/{self.name}", "--", *argv]
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        _ip("link", "set", self.outer, "up")

    def destroy(self) -> None:
        """Remove the namespace and its link; safe to call twice or after a failed create.
        Processes still inside keep the namespace alive but lose the link with it."""
        _ip("link", "del", self.outer, check=False)
        _ip("netns", "del", self.name, check=False)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    shown = _ip("-4", "-o", "addr", "show", check=False).stdout.split()
    used = set()
    for word in shown:
        with contextlib.suppress(ValueError):
            interface = ipaddress.ip_interface(word)
            if isinstance(interface, ipaddress.IPv4Interface):
                used.add(interface.network)
    return used


def _sweep_leftovers() -> None:
    """Namespaces left by an earlier run that died before its clean-up (pid gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit():
            pid = int(parts[1])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                continue
            NetnsHost(name, f"ts{pid % 100000}h{parts[2]}", "", "").destroy()


@contextlib.contextmanager
def netns_hosts(count: int) -> Iterator[list[NetnsHost]]:
    """`count` namespaced hosts, removed at the end whatever happens (and at exit)."""
    _sweep_leftovers()
    used = _used_subnets()
    free = (net for net in _SUBNETS.subnets(new_prefix=30) if net not in used)
    hosts: list[NetnsHost] = []
    pid = os.getpid()

    def clean() -> None:
        for host in hosts:
            host.destroy()

    atexit.register(clean)
    try:
        for index in range(count):
            subnet = next(free)
            root_side, inside = list(subnet.hosts())
            host = NetnsHost(
                f"{PREFIX}-{pid}-{index}", f"ts{pid % 100000}h{index}", str(root_side), str(inside)
            )
            hosts.append(host.create())
        yield hosts
    finally:
        clean()
        atexit.unregister(clean)
