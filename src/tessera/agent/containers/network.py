"""Bridge networking for container tasks: one network namespace per task, wired to this
agent's Linux bridge by the standard CNI plugins, with host ports mapped into it.

`attach` makes the namespace (`ip netns add`) and runs `loopback` and `bridge` (host-local
IPAM, its allocations in `<state_dir>/ipam` so they outlive the agent) and then `portmap`
when the task has ports. Before anything is made, an attachment file
`<state_dir>/<netns name>.json` records what is about to be made; it gains the bridge
plugin's result as soon as there is one. So `detach` can always finish the job from that
file alone: after an agent restart, after kill -9 in the middle of `attach`, and when the
namespace is already gone. DEL runs portmap, bridge, loopback, then the namespace goes,
then the file.

Three plugin gaps are closed here. The bridge plugin leaves its per-container masquerade
chain behind when the namespace is gone at DEL (it finds no eth0 to read the address from),
so `detach` removes that chain itself. portmap sets `route_localnet=1` on the bridge, so
that host ports answer on 127.0.0.1, but marks only `127.0.0.1` sources for masquerade, and
route_localnet also lets containers reach the host's loopback services: two iptables rules
per bridge (`bridge_rules`) masquerade 127.0.0.0/8 leaving through it and drop new
connections to 127.0.0.0/8 coming in from it.

Left in place on purpose, as the CNI plugins leave them: `net.ipv4.ip_forward=1` (set by
the bridge plugin for a gateway bridge), the shared `CNI-HOSTPORT-*` chains (other agents
and CNI users share them), and the bridge itself until `remove_bridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tessera.agent.containers.cni import (
    Invocation,
    PluginError,
    bridge_config,
    chain_name,
    container_address,
    loopback_config,
    plugins_missing,
    portmap_config,
    run_plugin,
    run_tool,
    with_prev_result,
)
from tessera.agent.disk import write_atomic

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
IFNAME = "eth0"
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
PLUGIN_TIMEOUT = 30.0
_IFNAMSIZ = 15  # the longest Linux interface name


class NetworkError(Exception):
    """Attaching or detaching failed; the message is one line naming the task and the cause."""


@dataclass(frozen=True, slots=True)
class PortMap:
    host_port: int
    container_port: int
    protocol: str  # "tcp" or "udp"

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")
        for port in (self.host_port, self.container_port):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not in 1-65535")


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    bridge: str = "tessera0"
    subnet: str = "10.232.0.0/24"  # host-local's range; the bridge (gateway) takes the first
    cni_bin_dir: Path = Path("/usr/lib/cni")
    ip_masq: bool = True  # containers reach the outside through the host's addresses

    def __post_init__(self) -> None:
        if not 0 < len(self.bridge) <= _IFNAMSIZ or "/" in self.bridge or " " in self.bridge:
            raise ValueError(f"bridge name {self.bridge!r} is not a valid interface name")
        network = ipaddress.ip_network(self.subnet)  # ValueError names a bad subnet
        if network.version != 4 or network.prefixlen > 30:
            raise ValueError(
                f"subnet {self.subnet} must be IPv4 with room for hosts (/30 or wider)"
            )


@dataclass(frozen=True, slots=True)
class Attachment:
    task_id: str
    netns: str  # path to the network namespace file
    ip: str  # the container's IPv4 address (no prefix)
    gateway: str
    ports: tuple[PortMap, ...]


# ---- pure parts: names and rules -------------------------------------------------------


def netns_name(state_dir: Path, task_id: str) -> str:
    """A short namespace name for the task, distinct between agents (whose state dirs differ):
    task IDs can be 200 characters, and the name is also the CNI container ID."""
    agent = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:8]
    task = hashlib.sha256(task_id.encode()).hexdigest()[:16]
    return f"tessera-{agent}-{task}"


def network_name(settings: BridgeSettings) -> str:
    return f"tessera-{settings.bridge}"


def port_mappings(ports: Sequence[PortMap]) -> list[dict[str, Any]]:
    """portmap's runtimeConfig entries (the `portMappings` capability)."""
    return [
        {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol}
        for p in ports
    ]


@dataclass(frozen=True, slots=True)
class HostRule:
    """An iptables rule this network keeps for its bridge while the bridge lives."""

    table: str
    chain: str
    rule: tuple[str, ...]
    first: bool = False  # inserted at the top of its chain rather than appended

    def command(self, operation: str) -> list[str]:
        """The iptables command line for `operation`: -C (check), -D, or "add"."""
        if operation == "add":
            operation = "-I" if self.first else "-A"
        return ["iptables", "-w", "-t", self.table, operation, self.chain, *self.rule]


def bridge_rules(bridge: str) -> tuple[HostRule, ...]:
    """The two rules portmap's `route_localnet=1` on the bridge calls for.

    Masquerade: portmap marks only 127.0.0.1 sources, so host-port connections from a client
    bound to 127.0.0.N (a local agent's address) left with a source the container cannot
    answer. Drop: with route_localnet a container can send packets to the host's 127.0.0.0/8
    services (the master, the agent, the DNS responders) by routing them to the gateway
    (CVE-2020-8558); only answers to connections the host made may come in that way.
    """
    return (
        HostRule(
            "nat", "POSTROUTING",
            ("-o", bridge, "-s", "127.0.0.0/8",
             "-m", "comment", "--comment", f"tessera {bridge}: host ports from loopback",
             "-j", "MASQUERADE"),
        ),
        HostRule(
            "filter", "INPUT",
            ("-i", bridge, "-d", "127.0.0.0/8",
             "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
             "-m", "comment", "--comment", f"tessera {bridge}: no loopback from containers",
             "-j", "DROP"),
            first=True,
        ),
    )  # fmt: skip


# ---- the saved state of one attachment ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Saved:
    """What an attachment file holds: enough to DEL everything without the agent's memory."""

    task_id: str
    name: str  # netns name, also the CNI container ID
    netns: str
    bridge: dict[str, Any]  # the bridge plugin's config as used for ADD
    ports: tuple[PortMap, ...]
    result: dict[str, Any] | None = None  # the bridge plugin's ADD result, once there is one

    @property
    def network(self) -> str:
        return str(self.bridge["name"])

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "task_id": self.task_id,
                "name": self.name,
                "netns": self.netns,
                "bridge": self.bridge,
                "ports": port_mappings(self.ports),
                "result": self.result,
            },
            indent=1,
        )

    @staticmethod
    def from_json(text: str) -> _Saved:
        data = json.loads(text)
        ports = tuple(
            PortMap(p["hostPort"], p["containerPort"], p["protocol"]) for p in data["ports"]
        )
        return _Saved(
            data["task_id"], data["name"], data["netns"], data["bridge"], ports, data["result"]
        )

    def attachment(self) -> Attachment | None:
        if self.result is None:
            return None
        ip, gateway = container_address(self.result, IFNAME)
        return Attachment(self.task_id, self.netns, ip, gateway, self.ports)


# ---- the network ---------------------------------------------------------------------------


class BridgeNetwork:
    """This agent's bridge network; one object per agent, safe for concurrent tasks."""

    def __init__(self, state_dir: Path, settings: BridgeSettings = BridgeSettings()) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self._tasks = _KeyedLocks()
        # Held by remove_bridge throughout, and by attach while it writes its intent file: an
        # attach either waits for the removal or is seen by it.
        self._bridge_lock = asyncio.Lock()

    def unavailable(self) -> str | None:
        """None when bridge networking can work here; else one line saying why not."""
        if sys.platform != "linux":
            return "bridge networking needs Linux"
        if os.geteuid() != 0:
            return "bridge networking needs a root agent"
        missing = plugins_missing(self.settings.cni_bin_dir, PLUGINS)
        if missing:
            return (
                f"CNI plugins missing in {self.settings.cni_bin_dir}: {', '.join(missing)}"
                " (install containernetworking-plugins)"
            )
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
            if shutil.which(tool, path=search) is None:
                return f"`{tool}` is not installed (install {package})"
        return None

    def attached(self) -> list[str]:
        """The task IDs with an attachment file, complete or not (for the agent's recovery)."""
        return sorted(saved.task_id for saved in self._all_saved())

    def attachment(self, task_id: str) -> Attachment | None:
        saved = self._load(task_id)
        return saved.attachment() if saved is not None else None

    async def attach(self, task_id: str, ports: Sequence[PortMap]) -> Attachment:
        """Give the task a namespace on the bridge with `ports` mapped; undone on failure."""
        async with self._tasks.hold(task_id):
            existing = self._load(task_id)
            if existing is not None:
                done = existing.attachment()
                if done is not None and done.ports == tuple(ports):
                    return done
                if done is not None:
                    raise NetworkError(f"network for task {task_id}: already attached")
                await self._detach(existing)  # left half made by an agent that died
            try:
                async with self._bridge_lock:
                    saved = self._intent(task_id, tuple(ports))
            except OSError as error:
                raise NetworkError(f"network for task {task_id}: {error}") from None
            try:
                return await self._attach(saved)
            except BaseException as error:
                try:
                    await self._detach(saved)
                except (NetworkError, OSError) as undo:
                    log.warning("undoing a failed attach left state behind: %s", undo)
                if isinstance(error, PluginError | OSError):
                    raise NetworkError(f"network for task {task_id}: {error}") from None
                raise

    async def detach(self, task_id: str) -> None:
        """Remove the task's namespace, addresses and rules. Idempotent; needs only the file."""
        async with self._tasks.hold(task_id):
            saved = self._load(task_id)
            if saved is not None:
                await self._detach(saved)

    async def remove_bridge(self) -> None:
        """Delete the bridge and its rules when no attachment is left; else do nothing."""
        async with self._bridge_lock:
            if self.attached():
                return
            try:
                await _remove_bridge(self.settings.bridge)
            except PluginError as error:
                raise NetworkError(f"removing bridge {self.settings.bridge}: {error}") from None

    # -- attach ---------------------------------------------------------------------------

    def _intent(self, task_id: str, ports: tuple[PortMap, ...]) -> _Saved:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        name = netns_name(self.state_dir, task_id)
        bridge = bridge_config(
            network=network_name(self.settings),
            bridge=self.settings.bridge,
            subnet=self.settings.subnet,
            ip_masq=self.settings.ip_masq,
            ipam_dir=self.state_dir / "ipam",
        )
        saved = _Saved(task_id, name, str(NETNS_DIR / name), bridge, ports)
        # Written before anything is made, so a crash from here on leaves a file to DEL from.
        self._save(saved)
        return saved

    async def _attach(self, saved: _Saved) -> Attachment:
        await _add_netns(saved.name)
        lo_call, eth_call = self._call(saved, "lo"), self._call(saved)
        # The bridge's rules go in alongside: nothing runs in the namespace before we return.
        outcomes = await asyncio.gather(
            run_plugin("bridge", "ADD", saved.bridge, eth_call, PLUGIN_TIMEOUT),
            run_plugin("loopback", "ADD", loopback_config(saved.network), lo_call, PLUGIN_TIMEOUT),
            self._ensure_bridge_rules(),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        bridge = outcomes[0]
        assert isinstance(bridge, dict)
        saved = replace(saved, result=bridge)
        self._save(saved)
        attachment = saved.attachment()
        assert attachment is not None
        if saved.ports:
            config = portmap_config(saved.network, port_mappings(saved.ports), bridge)
            await run_plugin("portmap", "ADD", config, self._call(saved), PLUGIN_TIMEOUT)
        return attachment

    async def _ensure_bridge_rules(self) -> None:
        # Checked on every attach (a few milliseconds, alongside the plugins), so a rule
        # someone flushed comes back with the next container.
        async with self._bridge_lock:
            for rule in bridge_rules(self.settings.bridge):
                if (await run_tool(rule.command("-C")))[0] == 0:
                    continue
                code, _, err = await run_tool(rule.command("add"))
                if code != 0:
                    raise PluginError(f"iptables: {err.decode(errors='replace').strip()}")

    # -- detach ---------------------------------------------------------------------------

    async def _detach(self, saved: _Saved) -> None:
        """DEL in reverse order, each step even when an earlier one failed; the file stays
        (for a retry) unless every step worked."""
        failures: list[str] = []
        steps: list[tuple[str, dict[str, Any], str]] = []
        if saved.ports:
            steps.append(
                (
                    "portmap",
                    portmap_config(saved.network, port_mappings(saved.ports), saved.result),
                    IFNAME,
                )
            )
        steps.append(("bridge", with_prev_result(saved.bridge, saved.result), IFNAME))
        steps.append(("loopback", loopback_config(saved.network), "lo"))
        for plugin, config, ifname in steps:
            try:
                await run_plugin(plugin, "DEL", config, self._call(saved, ifname), PLUGIN_TIMEOUT)
            except PluginError as error:
                failures.append(str(error))
        if saved.bridge.get("ipMasq"):
            try:
                await _remove_masquerade_chain(chain_name(saved.network, saved.name))
            except PluginError as error:
                failures.append(str(error))
        try:
            await _delete_netns(saved.name)
        except PluginError as error:
            failures.append(str(error))
        if failures:
            raise NetworkError(f"network for task {saved.task_id}: {'; '.join(failures)}")
        with contextlib.suppress(FileNotFoundError):
            self._path(saved.name).unlink()

    # -- files ----------------------------------------------------------------------------

    def _call(self, saved: _Saved, ifname: str = IFNAME) -> Invocation:
        return Invocation(saved.name, saved.netns, ifname, self.settings.cni_bin_dir)

    def _path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def _save(self, saved: _Saved) -> None:
        write_atomic(self._path(saved.name), saved.to_json())

    def _load(self, task_id: str) -> _Saved | None:
        path = self._path(netns_name(self.state_dir, task_id))
        try:
            return _Saved.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NetworkError(f"network for task {task_id}: unreadable {path}: {error}") from None

    def _all_saved(self) -> Iterator[_Saved]:
        for path in sorted(self.state_dir.glob("tessera-*.json")):
            try:
                yield _Saved.from_json(path.read_text())
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("unreadable attachment file %s: %s", path, error)


class _KeyedLocks:
    """One lock per key, forgotten when nobody holds or awaits it (task IDs never repeat)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# ---- namespaces and iptables ----------------------------------------------------------------


async def _add_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        await _delete_netns(name)  # a leftover of this same task: its file was lost
    code, _, err = await run_tool(["ip", "netns", "add", name])
    if code != 0:
        raise PluginError(f"ip netns add {name}: {err.decode(errors='replace').strip()}")


async def _delete_netns(name: str) -> None:
    if not (NETNS_DIR / name).exists():
        return
    code, _, err = await run_tool(["ip", "netns", "del", name])
    if code != 0 and (NETNS_DIR / name).exists():
        raise PluginError(f"ip netns del {name}: {err.decode(errors='replace').strip()}")


async def _remove_bridge(bridge: str) -> None:
    for rule in bridge_rules(bridge):
        while (await run_tool(rule.command("-D")))[0] == 0:
            pass  # every copy, should there be several
    code, _, err = await run_tool(["ip", "link", "del", bridge])
    if code != 0 and b"Cannot find device" not in err:
        raise PluginError(f"ip link del {bridge}: {err.decode(errors='replace').strip()}")


async def _remove_masquerade_chain(chain: str) -> None:
    """Remove the bridge plugin's per-container masquerade chain and the POSTROUTING rules
    jumping to it, if the plugin's DEL left them (it does when the namespace is gone)."""
    code, _, _ = await run_tool(["iptables", "-w", "-t", "nat", "-S", chain])
    if code != 0:
        return  # no such chain: the plugin removed it
    _, rules, _ = await run_tool(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"])
    for line in rules.decode(errors="replace").splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", "POSTROUTING"] and words[-2:] == ["-j", chain]:
            await run_tool(["iptables", "-w", "-t", "nat", "-D", *words[1:]])
    await run_tool(["iptables", "-w", "-t", "nat", "-F", chain])
    code, _, err = await run_tool(["iptables", "-w", "-t", "nat", "-X", chain])
    if code != 0:
        raise PluginError(f"iptables -X {chain}: {err.decode(errors='replace').strip()}")
