"""Bridge networking without root: plugin configs, port mappings, names, plugin errors and
results, and the attach/detach sequence against fake plugins (shell scripts that log)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.containers import network
from tessera.agent.containers.cni import (
    Invocation,
    PluginError,
    bridge_config,
    chain_name,
    container_address,
    error_message,
    gateway_address,
    portmap_config,
    run_plugin,
)
from tessera.agent.containers.network import (
    BridgeNetwork,
    BridgeSettings,
    NetworkError,
    PortMap,
    bridge_rules,
    netns_name,
    network_name,
    port_mappings,
)

BRIDGE_RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "tessera3", "mac": "7a:c7:b7:ce:71:65"},
        {"name": "vethd3ccdb26", "mac": "3e:1f:92:1b:b8:a3"},
        {"name": "eth0", "mac": "ae:7f:9e:11:e9:18", "sandbox": "/run/netns/x"},
    ],
    "ips": [{"interface": 2, "address": "10.232.3.2/24", "gateway": "10.232.3.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


# ---- configs ---------------------------------------------------------------------------------


def test_bridge_config_has_a_gateway_bridge_and_a_host_local_range_in_the_state_dir() -> None:
    config = bridge_config(
        network="tessera-tessera3",
        bridge="tessera3",
        subnet="10.232.3.0/24",
        ip_masq=False,
        ipam_dir=Path("/var/lib/t/net/ipam"),
    )
    assert config["type"] == "bridge"
    assert config["name"] == "tessera-tessera3"
    assert config["bridge"] == "tessera3"
    assert config["isGateway"] is True
    assert config["hairpinMode"] is True
    assert config["ipMasq"] is False
    assert config["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.232.3.0/24", "gateway": "10.232.3.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/t/net/ipam",
    }


def test_the_network_is_named_after_its_bridge_and_masquerades_by_default() -> None:
    assert network_name(BridgeSettings(bridge="tessera3")) == "tessera-tessera3"
    assert BridgeSettings().ip_masq is True


def test_gateway_is_the_first_address_of_the_subnet() -> None:
    assert gateway_address("10.232.0.0/24") == "10.232.0.1"
    assert gateway_address("192.168.8.0/22") == "192.168.8.1"


def test_port_mappings_translate_each_protocol_to_its_own_entry() -> None:
    ports = [PortMap(31000, 80, "tcp"), PortMap(31001, 53, "udp"), PortMap(31001, 53, "tcp")]
    assert port_mappings(ports) == [
        {"hostPort": 31000, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 31001, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 31001, "containerPort": 53, "protocol": "tcp"},
    ]


def test_portmap_config_chains_on_the_bridge_result_with_snat() -> None:
    mappings = port_mappings([PortMap(31000, 80, "tcp")])
    config = portmap_config("tessera-tessera3", mappings, BRIDGE_RESULT)
    assert config == {
        "cniVersion": "1.0.0",
        "name": "tessera-tessera3",
        "type": "portmap",
        "snat": True,
        "capabilities": {"portMappings": True},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 31000, "containerPort": 80, "protocol": "tcp"}]
        },
        "prevResult": BRIDGE_RESULT,
    }
    # DEL without a saved result still names the chain by network and container ID.
    assert "prevResult" not in portmap_config("n", mappings, None)


def test_bridge_rules_masquerade_loopback_out_and_drop_new_loopback_in() -> None:
    masquerade, drop = bridge_rules("tessera3")
    assert masquerade.command("add") == [
        "iptables", "-w", "-t", "nat", "-A", "POSTROUTING",
        "-o", "tessera3", "-s", "127.0.0.0/8",
        "-m", "comment", "--comment", "tessera tessera3: host ports from loopback",
        "-j", "MASQUERADE",
    ]  # fmt: skip
    assert drop.command("add")[3:6] == ["filter", "-I", "INPUT"]
    assert drop.command("-C")[4:] == [
        "-C", "INPUT", "-i", "tessera3", "-d", "127.0.0.0/8",
        "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
        "-m", "comment", "--comment", "tessera tessera3: no loopback from containers",
        "-j", "DROP",
    ]  # fmt: skip


# ---- value checks and names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [(31000, 80, "sctp"), (0, 80, "tcp"), (31000, 0, "udp"), (70000, 80, "tcp")]
)
def test_port_map_refuses_bad_values(args: tuple[int, int, str]) -> None:
    with pytest.raises(ValueError):
        PortMap(*args)


@pytest.mark.parametrize(
    "options",
    [
        {"bridge": "a-bridge-name-too-long"},
        {"bridge": ""},
        {"subnet": "fd00::/64"},
        {"subnet": "10.232.0.0/31"},
        {"subnet": "not a subnet"},
    ],
)
def test_bridge_settings_refuse_bad_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BridgeSettings(**options)


def test_netns_names_are_short_safe_and_distinct_per_agent_and_task() -> None:
    long_task = "a" * 80 + "." + "b" * 119
    first = netns_name(Path("/var/lib/agent1/net"), long_task)
    assert len(first) <= 40
    assert first.replace("-", "").isalnum()
    assert first == netns_name(Path("/var/lib/agent1/net"), long_task)
    assert first != netns_name(Path("/var/lib/agent2/net"), long_task)
    assert first != netns_name(Path("/var/lib/agent1/net"), long_task + "x")


def test_chain_names_follow_the_plugins_formula() -> None:
    # Names the plugins 1.1.1 made on this machine for network "h3exp", container "h3exp1".
    assert chain_name("h3exp", "h3exp1") == "CNI-a38a99245f16bdccc30245a2"
    assert chain_name("h3exp", "h3exp1", "DN-") == "CNI-DN-a38a99245f16bdccc3024"


# ---- plugin answers --------------------------------------------------------------------------


def test_error_message_reads_the_cni_error_object() -> None:
    out = json.dumps({"code": 7, "msg": "failed to allocate", "details": "range\nfull"}).encode()
    assert error_message(out, b"", 1) == "failed to allocate: range full (code 7)"


def test_error_message_falls_back_to_what_was_printed() -> None:
    assert error_message(b"", b"panic: x\nboom at line 3\n", 2) == "boom at line 3"
    assert error_message(b"", b"", 2) == "exit status 2"
    long = error_message(json.dumps({"msg": "x" * 1000}).encode(), b"", 1)
    assert len(long) <= 400
    assert "\n" not in long


def test_container_address_takes_the_sandbox_interface_ipv4() -> None:
    assert container_address(BRIDGE_RESULT, "eth0") == ("10.232.3.2", "10.232.3.1")
    host_side = {
        "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [
            {"interface": 0, "address": "10.0.0.9/24"},
            {"interface": 1, "address": "fd00::2/64"},
            {"interface": 1, "address": "10.0.0.2/24", "gateway": "10.0.0.1"},
        ],
    }
    assert container_address(host_side, "eth0") == ("10.0.0.2", "10.0.0.1")
    with pytest.raises(PluginError):
        container_address({"ips": []}, "eth0")


# ---- the sequence, with fake plugins ---------------------------------------------------------

FAKE_PLUGIN = """#!/bin/sh
input=$(cat)
echo "$(basename "$0") $CNI_COMMAND $CNI_IFNAME $CNI_CONTAINERID $CNI_NETNS" >> "{log}"
printf '%s\\n' "$input" > "{log}.$(basename "$0").$CNI_COMMAND"
if [ -e "{fail}.$(basename "$0").$CNI_COMMAND" ]; then
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"no luck","details":"port busy"}}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then echo '{result}'; fi
"""


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plugin dir of scripts that log each call; namespaces and iptables are stubbed out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = FAKE_PLUGIN.format(
        log=tmp_path / "calls", fail=tmp_path / "fail", result=json.dumps(BRIDGE_RESULT)
    )
    for name in network.PLUGINS:
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(stat.S_IRWXU)

    async def nothing(*_: object) -> None:
        return None

    monkeypatch.setattr(network, "_add_netns", nothing)
    monkeypatch.setattr(network, "_delete_netns", nothing)
    monkeypatch.setattr(network, "_remove_masquerade_chain", nothing)
    monkeypatch.setattr(BridgeNetwork, "_ensure_bridge_rules", nothing)
    return bin_dir


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [" ".join(line.split()[:3]) for line in lines]


def stdin_of(tmp_path: Path, plugin: str, command: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tmp_path / f"calls.{plugin}.{command}").read_text())
    return loaded


async def test_attach_runs_loopback_and_bridge_then_portmap_and_saves_the_result(
    tmp_path: Path, fake_bin: Path
) -> None:
    state = tmp_path / "state"
    net = BridgeNetwork(state, BridgeSettings(bridge="tessera3", cni_bin_dir=fake_bin))
    made = await net.attach("shop_web.1", [PortMap(31000, 80, "tcp")])
    assert made.ip == "10.232.3.2"
    assert made.gateway == "10.232.3.1"
    assert made.netns == f"/run/netns/{netns_name(state, 'shop_web.1')}"
    assert sorted(calls(tmp_path)[:2]) == ["bridge ADD eth0", "loopback ADD lo"]  # together
    assert stdin_of(tmp_path, "portmap", "ADD")["prevResult"] == BRIDGE_RESULT
    assert net.attached() == ["shop_web.1"]
    assert net.attachment("shop_web.1") == made
    assert await net.attach("shop_web.1", [PortMap(31000, 80, "tcp")]) == made  # idempotent
    with pytest.raises(NetworkError, match="already attached"):
        await net.attach("shop_web.1", [])


async def test_detach_after_a_restart_dels_in_order_with_the_saved_result(
    tmp_path: Path, fake_bin: Path
) -> None:
    settings = BridgeSettings(bridge="tessera3", cni_bin_dir=fake_bin)
    await BridgeNetwork(tmp_path / "state", settings).attach("t.1", [PortMap(31000, 80, "udp")])
    calls(tmp_path)
    restarted = BridgeNetwork(tmp_path / "state", settings)
    await restarted.detach("t.1")
    assert calls(tmp_path) == ["portmap DEL eth0", "bridge DEL eth0", "loopback DEL lo"]
    assert stdin_of(tmp_path, "bridge", "DEL")["prevResult"] == BRIDGE_RESULT
    assert stdin_of(tmp_path, "portmap", "DEL")["runtimeConfig"]["portMappings"] == [
        {"hostPort": 31000, "containerPort": 80, "protocol": "udp"}
    ]
    assert restarted.attached() == []
    await restarted.detach("t.1")  # again: nothing to do
    assert calls(tmp_path) == []


async def test_a_failed_portmap_is_undone_and_reported_in_one_line(
    tmp_path: Path, fake_bin: Path
) -> None:
    (tmp_path / "fail.portmap.ADD").touch()
    net = BridgeNetwork(tmp_path / "state", BridgeSettings(cni_bin_dir=fake_bin))
    with pytest.raises(NetworkError) as raised:
        await net.attach("shop_web.2", [PortMap(31000, 80, "tcp")])
    message = str(raised.value)
    assert message == (
        "network for task shop_web.2: portmap ADD failed: no luck: port busy (code 11)"
    )
    assert calls(tmp_path)[-3:] == ["portmap DEL eth0", "bridge DEL eth0", "loopback DEL lo"]
    assert net.attached() == []


async def test_a_failed_del_keeps_the_file_for_a_retry(tmp_path: Path, fake_bin: Path) -> None:
    net = BridgeNetwork(tmp_path / "state", BridgeSettings(cni_bin_dir=fake_bin))
    await net.attach("t.3", [])
    (tmp_path / "fail.bridge.DEL").touch()
    with pytest.raises(NetworkError, match=r"^network for task t\.3: bridge DEL failed"):
        await net.detach("t.3")
    assert "loopback DEL lo" in calls(tmp_path)  # the other steps still ran
    assert net.attached() == ["t.3"]
    (tmp_path / "fail.bridge.DEL").unlink()
    await net.detach("t.3")
    assert net.attached() == []


async def test_an_attach_cut_short_before_the_result_is_saved_can_be_detached(
    tmp_path: Path, fake_bin: Path
) -> None:
    # What kill -9 between the namespace and the bridge result leaves: the intent file only.
    net = BridgeNetwork(tmp_path / "state", BridgeSettings(cni_bin_dir=fake_bin))
    net._intent("t.4", (PortMap(31000, 80, "tcp"),))
    assert net.attached() == ["t.4"]
    assert net.attachment("t.4") is None
    await BridgeNetwork(tmp_path / "state", BridgeSettings(cni_bin_dir=fake_bin)).detach("t.4")
    assert calls(tmp_path) == ["portmap DEL eth0", "bridge DEL eth0", "loopback DEL lo"]
    assert "prevResult" not in stdin_of(tmp_path, "bridge", "DEL")
    assert net.attached() == []


async def test_run_plugin_passes_the_cni_variables(tmp_path: Path, fake_bin: Path) -> None:
    call = Invocation("cid-1", "/run/netns/cid-1", "eth0", fake_bin)
    assert await run_plugin("bridge", "ADD", {"x": 1}, call, 5.0) == BRIDGE_RESULT
    assert (tmp_path / "calls").read_text().split() == [
        "bridge",
        "ADD",
        "eth0",
        "cid-1",
        "/run/netns/cid-1",
    ]
    assert stdin_of(tmp_path, "bridge", "ADD") == {"x": 1}


def test_unavailable_names_missing_plugins(tmp_path: Path) -> None:
    reason = BridgeNetwork(tmp_path, BridgeSettings(cni_bin_dir=tmp_path)).unavailable()
    assert reason is not None
    assert "root" in reason or "portmap" in reason
