"""Bridge networking with the real CNI plugins: servers in task namespaces reached through
their IPs and host ports, and nothing left behind by detach (root, plugins and iptables)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.containers.cni import chain_name, gateway_address
from tessera.agent.containers.network import (
    NETNS_DIR,
    Attachment,
    BridgeNetwork,
    BridgeSettings,
    PortMap,
    bridge_rules,
    netns_name,
    network_name,
)
from tessera.testing.cluster import free_port

HTTP_SERVER = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{sys.argv[2]} from {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"""

UDP_ECHO = r"""
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = server.recvfrom(2048)
    server.sendto(b"echo:" + data, peer)
"""

# A raw HTTP GET: urllib would honour proxy variables from the environment.
HTTP_GET = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
print(answer.partition(b"\r\n\r\n")[2].decode())
"""

CONTAINER_PORT = 8080


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def nat_rules() -> str:
    return sh("iptables", "-w", "-t", "nat", "-S").stdout


def http_get(host: str, port: int, source: str | None = None) -> str:
    with socket.socket() as conn:
        conn.settimeout(5)
        if source:
            conn.bind((source, 0))
        conn.connect((host, port))
        conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer.partition(b"\r\n\r\n")[2].decode()


def udp_ask(host: str, port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
        conn.settimeout(3)
        conn.sendto(payload, (host, port))
        return conn.recvfrom(2048)[0]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


def in_netns(netns: str, script: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns}", sys.executable, "-c", script, *args]


def saved_state(net: BridgeNetwork, task_id: str) -> dict[str, Any]:
    path = net.state_dir / f"{netns_name(net.state_dir, task_id)}.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def host_veth(net: BridgeNetwork, task_id: str) -> str:
    interfaces = saved_state(net, task_id)["result"]["interfaces"]
    return next(
        i["name"] for i in interfaces if not i.get("sandbox") and i["name"] != net.settings.bridge
    )


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", name, check=False).returncode == 0


def assert_nothing_left(net: BridgeNetwork, task_id: str, ip: str, veth: str | None) -> None:
    name = netns_name(net.state_dir, task_id)
    network = network_name(net.settings)
    assert not (NETNS_DIR / name).exists()
    assert name not in sh("ip", "netns", "list").stdout
    rules = nat_rules()
    assert chain_name(network, name, "DN-") not in rules
    assert chain_name(network, name) not in rules
    assert f"{ip}/32" not in rules
    if veth is not None:
        assert not link_exists(veth)
    assert not (net.state_dir / "ipam" / network / ip).exists()
    assert task_id not in net.attached()


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def host_settings_restored() -> Iterator[None]:
    """Put back what the plugins change for everyone, when this module made the change and
    nobody else uses it any more: ip_forward, and the shared CNI-HOSTPORT-* chains."""
    if os.geteuid() != 0:
        yield
        return
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    forward_before = forward.read_text().strip()
    chains_before = sh("iptables", "-w", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT", check=False)
    yield
    if chains_before.returncode != 0:
        remove_unused_hostport_chains()
    if forward_before == "0" and "CNI-DN-" not in nat_rules():
        forward.write_text("0\n")


def remove_unused_hostport_chains() -> None:
    ipt = ("iptables", "-w", "-t", "nat")
    listed = sh(*ipt, "-S", "CNI-HOSTPORT-DNAT", check=False)
    if listed.returncode != 0 or len(listed.stdout.splitlines()) > 1:
        return  # gone, or some other container still has a host port
    entry = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]
    for chain in ("PREROUTING", "OUTPUT"):
        sh(*ipt, "-D", chain, *entry, check=False)
    if sh(*ipt, "-X", "CNI-HOSTPORT-DNAT", check=False).returncode != 0:
        for chain in ("PREROUTING", "OUTPUT"):  # someone added a port meanwhile
            sh(*ipt, "-A", chain, *entry, check=False)
        return
    for line in sh(*ipt, "-S", "POSTROUTING").stdout.splitlines():
        if line.endswith("-j CNI-HOSTPORT-MASQ"):
            sh(*ipt, "-D", *shlex.split(line)[1:], check=False)
    for chain in ("CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"):
        sh(*ipt, "-F", chain, check=False)
        sh(*ipt, "-X", chain, check=False)


def unused_subnet() -> str:
    routes = sh("ip", "-4", "route", "show", "table", "all").stdout
    for _ in range(50):
        third = secrets.randbelow(256)
        if f"10.250.{third}." not in routes:
            return f"10.250.{third}.0/24"
    pytest.fail("no free 10.250.X.0/24 subnet")


class Harness:
    """The test's network and the server processes it starts; `close` removes all of it."""

    def __init__(self, state_dir: Path) -> None:
        self.settings = BridgeSettings(
            bridge=f"tstbr{secrets.token_hex(3)}", subnet=unused_subnet()
        )
        self.net = BridgeNetwork(state_dir, self.settings)
        self.processes: list[subprocess.Popen[str]] = []

    def serve(self, attachment: Attachment, script: str = HTTP_SERVER, *args: str) -> None:
        process = subprocess.Popen(
            in_netns(attachment.netns, script, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"

    def serve_http(self, attachment: Attachment) -> None:
        self.serve(attachment, HTTP_SERVER, str(CONTAINER_PORT), attachment.task_id)

    def stop_servers(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes.clear()

    async def close(self) -> None:
        self.stop_servers()
        fresh = BridgeNetwork(self.net.state_dir, self.settings)
        for task_id in fresh.attached():
            with contextlib.suppress(Exception):
                await fresh.detach(task_id)
        await fresh.remove_bridge()
        # Last resort, for a test that failed half way through a detach.
        prefix = netns_name(self.net.state_dir, "x").rsplit("-", 1)[0]
        for name in sh("ip", "netns", "list").stdout.split():
            if name.startswith(prefix):
                sh("ip", "netns", "del", name, check=False)
        if link_exists(self.settings.bridge):
            sh("ip", "link", "del", self.settings.bridge, check=False)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    reason = BridgeNetwork(tmp_path / "net").unavailable()
    if reason is None and shutil.which("nsenter") is None:
        reason = "nsenter (util-linux) is not installed"
    if reason is not None:
        pytest.skip(reason)
    made = Harness(tmp_path / "net")
    try:
        yield made
    finally:
        await made.close()
    assert not link_exists(made.settings.bridge)


# ---- tests -----------------------------------------------------------------------------------


async def test_a_host_port_reaches_the_container_from_loopback_addresses(harness: Harness) -> None:
    host_port = free_port()
    web = await harness.net.attach("shop_web.a1", [PortMap(host_port, CONTAINER_PORT, "tcp")])
    assert web.gateway == gateway_address(harness.settings.subnet)
    harness.serve_http(web)

    assert http_get(web.ip, CONTAINER_PORT).startswith("shop_web.a1 from")
    assert http_get("127.0.0.1", host_port).startswith("shop_web.a1 from")
    assert http_get("127.0.0.2", host_port).startswith("shop_web.a1 from")
    assert http_get(web.gateway, host_port).startswith("shop_web.a1 from")
    # A client bound to another loopback address (a local agent's 127.0.0.N) needs the
    # bridge's loopback masquerade rule: portmap marks only 127.0.0.1 for masquerade.
    answer = http_get("127.0.0.2", host_port, source="127.0.0.2")
    assert answer == f"shop_web.a1 from {web.gateway}"
    # The loopback plugin brought `lo` up inside the namespace.
    inside = sh(*in_netns(web.netns, HTTP_GET, "127.0.0.1", str(CONTAINER_PORT)))
    assert inside.stdout.startswith("shop_web.a1 from 127.0.0.1")


async def test_two_containers_on_one_bridge_talk_directly_and_through_host_ports(
    harness: Harness,
) -> None:
    host_port = free_port()
    first = await harness.net.attach("app.one", [PortMap(host_port, CONTAINER_PORT, "tcp")])
    second = await harness.net.attach("app.two", [])
    assert first.ip != second.ip
    harness.serve_http(first)

    direct = sh(*in_netns(second.netns, HTTP_GET, first.ip, str(CONTAINER_PORT)))
    assert direct.stdout.strip() == f"app.one from {second.ip}"
    through_host = sh(*in_netns(second.netns, HTTP_GET, first.gateway, str(host_port)))
    assert through_host.stdout.startswith("app.one from")
    # Hairpin: the container reaches itself through its own host port.
    hairpin = sh(*in_netns(first.netns, HTTP_GET, first.gateway, str(host_port)))
    assert hairpin.stdout.startswith("app.one from")


async def test_a_udp_mapping_next_to_tcp_on_the_same_host_port(harness: Harness) -> None:
    host_port = free_udp_port()
    ports = [PortMap(host_port, 5353, "udp"), PortMap(host_port, CONTAINER_PORT, "tcp")]
    dns = await harness.net.attach("dns.u1", ports)
    harness.serve(dns, UDP_ECHO, "5353")
    harness.serve_http(dns)
    assert udp_ask("127.0.0.1", host_port, b"ping") == b"echo:ping"
    assert udp_ask("127.0.0.2", host_port, b"pong") == b"echo:pong"
    assert http_get("127.0.0.1", host_port).startswith("dns.u1 from")


async def test_detach_leaves_no_namespace_chain_veth_or_address(harness: Harness) -> None:
    host_port = free_port()
    web = await harness.net.attach("web.d1", [PortMap(host_port, CONTAINER_PORT, "tcp")])
    veth = host_veth(harness.net, "web.d1")
    network = network_name(harness.settings)
    assert link_exists(veth)
    assert chain_name(network, netns_name(harness.net.state_dir, "web.d1"), "DN-") in nat_rules()
    assert (harness.net.state_dir / "ipam" / network / web.ip).exists()

    await harness.net.detach("web.d1")
    assert_nothing_left(harness.net, "web.d1", web.ip, veth)
    await harness.net.detach("web.d1")  # idempotent


async def test_detach_after_an_agent_restart_from_the_saved_state(harness: Harness) -> None:
    host_port = free_port()
    web = await harness.net.attach("web.r1", [PortMap(host_port, CONTAINER_PORT, "tcp")])
    veth = host_veth(harness.net, "web.r1")
    restarted = BridgeNetwork(harness.net.state_dir, harness.settings)
    assert restarted.attached() == ["web.r1"]
    assert restarted.attachment("web.r1") == web
    await restarted.detach("web.r1")
    assert_nothing_left(restarted, "web.r1", web.ip, veth)


async def test_detach_when_the_namespace_is_already_gone(harness: Harness) -> None:
    host_port = free_port()
    web = await harness.net.attach("web.g1", [PortMap(host_port, CONTAINER_PORT, "tcp")])
    veth = host_veth(harness.net, "web.g1")
    sh("ip", "netns", "del", netns_name(harness.net.state_dir, "web.g1"))
    # The bridge plugin's DEL skips its masquerade chain without the namespace.
    await harness.net.detach("web.g1")
    assert_nothing_left(harness.net, "web.g1", web.ip, veth)


AGENT_ATTACHING = r"""
import asyncio, sys
from pathlib import Path
from tessera.agent.containers.network import BridgeNetwork, BridgeSettings, PortMap
async def main():
    settings = BridgeSettings(bridge=sys.argv[2], subnet=sys.argv[3])
    net = BridgeNetwork(Path(sys.argv[1]), settings)
    print("attaching", flush=True)
    await net.attach("crash.1", [PortMap(int(sys.argv[4]), 80, "tcp")])
    print("attached", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.025, 0.045])
async def test_detach_after_the_agent_is_killed_in_the_middle_of_attach(
    harness: Harness, delay: float
) -> None:
    state_dir, settings = harness.net.state_dir, harness.settings
    argv = [str(state_dir), settings.bridge, settings.subnet, str(free_port())]
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_ATTACHING, *argv],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its plugins keep running after it dies, as they would
    )
    assert agent.stdout is not None
    assert agent.stdout.readline().strip() == "attaching"
    time.sleep(delay)
    agent.kill()
    agent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # orphaned plugin runs finish first
        try:
            os.killpg(agent.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)

    restarted = BridgeNetwork(state_dir, settings)
    # Depending on the delay: nothing yet, the intent file only, or a complete attachment.
    for task_id in restarted.attached():
        await restarted.detach(task_id)
    name = netns_name(state_dir, "crash.1")
    assert restarted.attached() == []
    assert not (NETNS_DIR / name).exists()
    assert name not in sh("iptables-save").stdout
    assert not list((state_dir / "ipam").glob(f"*/{settings.subnet.rsplit('.', 2)[0]}.*"))


async def test_remove_bridge_waits_for_the_last_attachment(harness: Harness) -> None:
    await harness.net.attach("web.b1", [PortMap(free_port(), CONTAINER_PORT, "tcp")])
    checks = [rule.command("-C") for rule in bridge_rules(harness.settings.bridge)]
    await harness.net.remove_bridge()
    assert link_exists(harness.settings.bridge)
    await harness.net.detach("web.b1")
    assert all(sh(*check, check=False).returncode == 0 for check in checks)
    await harness.net.remove_bridge()
    assert not link_exists(harness.settings.bridge)
    assert all(sh(*check, check=False).returncode != 0 for check in checks)
    await harness.net.remove_bridge()  # again: nothing to do


async def test_containers_cannot_reach_the_hosts_loopback_services(harness: Harness) -> None:
    # portmap's route_localnet=1 on the bridge would let a container that routes 127.0.0.0/8
    # to its gateway (root in its namespace, or CAP_NET_RAW) reach services the host binds
    # to 127.0.0.1 (CVE-2020-8558). The bridge's DROP rule stops that.
    attacker = await harness.net.attach("evil.1", [PortMap(free_port(), CONTAINER_PORT, "tcp")])
    name = netns_name(harness.net.state_dir, "evil.1")
    for command in (
        ["route", "del", "local", "127.0.0.0/8", "table", "local"],
        ["route", "del", "local", "127.0.0.1", "table", "local"],
        ["route", "add", "127.0.0.0/8", "via", attacker.gateway, "dev", "eth0"],
    ):
        sh("ip", "-n", name, *command, check=False)
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
    send = "import socket, sys; socket.socket(2, 2).sendto(b'hi', ('127.0.0.1', int(sys.argv[1])))"

    def reaches_host() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service:
            service.bind(("127.0.0.1", 0))
            service.settimeout(0.5)
            sh(*in_netns(attacker.netns, send, str(service.getsockname()[1])))
            try:
                return service.recvfrom(64)[0] == b"hi"
            except TimeoutError:
                return False

    assert not reaches_host()
    drop = bridge_rules(harness.settings.bridge)[1]
    sh(*drop.command("-D"))
    try:
        assert reaches_host()  # the attack is real: it works without the rule
    finally:
        sh(*drop.command("add"))


async def test_two_networks_on_one_machine_do_not_interfere(
    harness: Harness, tmp_path: Path
) -> None:
    other = Harness(tmp_path / "other-agent")
    try:
        port_a, port_b = free_port(), free_port()
        a = await harness.net.attach("same.task", [PortMap(port_a, CONTAINER_PORT, "tcp")])
        b = await other.net.attach("same.task", [PortMap(port_b, CONTAINER_PORT, "tcp")])
        assert a.netns != b.netns
        harness.serve_http(a)
        other.serve_http(b)
        assert http_get("127.0.0.1", port_a) == f"same.task from {a.gateway}"
        assert http_get("127.0.0.1", port_b) == f"same.task from {b.gateway}"
        await other.net.detach("same.task")
        await other.net.remove_bridge()
        assert http_get("127.0.0.1", port_a).startswith("same.task from")
    finally:
        await other.close()


async def test_attach_and_detach_timings(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    timings: dict[str, list[float]] = {}
    for round_ in range(8):
        for ports in (1, 0):
            task_id = f"bench.{ports}.{round_}"
            mapped = [PortMap(free_port(), CONTAINER_PORT, "tcp")] * ports
            started = time.perf_counter()
            await harness.net.attach(task_id, mapped)
            timings.setdefault(f"attach {ports} port", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            await harness.net.detach(task_id)
            timings.setdefault(f"detach {ports} port", []).append(time.perf_counter() - started)
    # Ten at once, as when a deployment starts many containers on one agent.
    started = time.perf_counter()
    made = await asyncio.gather(
        *(harness.net.attach(f"many.{i}", [PortMap(free_port(), 80, "tcp")]) for i in range(10))
    )
    attached_all = time.perf_counter() - started
    assert len({a.ip for a in made}) == 10
    started = time.perf_counter()
    await asyncio.gather(*(harness.net.detach(a.task_id) for a in made))
    detached_all = time.perf_counter() - started
    with capsys.disabled():
        medians = ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in timings.items())
        print(f"\nbridge network medians of 8: {medians}")
        print(
            f"10 at once: attach {attached_all * 1000:.0f} ms, detach {detached_all * 1000:.0f} ms"
        )
    assert harness.net.attached() == []
