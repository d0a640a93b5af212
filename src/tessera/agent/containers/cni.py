"""The CNI plugin protocol, spoken directly: plugin configs, running a plugin binary, and
reading its result or error.

A plugin is an executable in the plugin directory. It gets the command and the container in
`CNI_*` environment variables and its network configuration as JSON on stdin; it answers
with a result (ADD) or nothing (DEL) on stdout and exit status 0, or with an error object
`{"code", "msg", "details"}` on stdout and a non-zero status (CNI spec 1.0, "Error").
Everything here runs as an asyncio subprocess, so the agent's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CNI_VERSION = "1.0.0"
# The plugins look for `iptables` and friends on PATH; an agent started from a minimal
# environment may not have the sbin directories there.
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_MESSAGE = 400


class PluginError(Exception):
    """A plugin or tool failed; the message is one line that names it and the cause."""


@dataclass(frozen=True, slots=True)
class Invocation:
    """Who a plugin call is for: the CNI_* variables other than the command."""

    container_id: str
    netns: str
    ifname: str
    bin_dir: Path


async def run_plugin(
    plugin: str, command: str, config: Mapping[str, Any], call: Invocation, timeout: float
) -> dict[str, Any]:
    """Run `plugin` with `command` (ADD, DEL, CHECK): its parsed result, {} when it said none."""
    env = {
        "PATH": _TOOL_PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": call.container_id,
        "CNI_NETNS": call.netns,
        "CNI_IFNAME": call.ifname,
        "CNI_PATH": str(call.bin_dir),
    }
    argv = [str(call.bin_dir / plugin)]
    code, out, err = await run_tool(argv, json.dumps(config).encode(), env, timeout)
    if code != 0:
        raise PluginError(f"{plugin} {command} failed: {error_message(out, err, code)}")
    if not out.strip():
        return {}
    try:
        result = json.loads(out)
    except ValueError as error:
        raise PluginError(f"{plugin} {command} printed no JSON result: {error}") from None
    if not isinstance(result, dict):
        raise PluginError(f"{plugin} {command} printed a result that is not an object")
    return result


async def run_tool(
    argv: Sequence[str],
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes, bytes]:
    """Run a command to its end: (exit status, stdout, stderr). A command that outlives
    `timeout` (or whose caller is cancelled) is killed; a timeout raises PluginError."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else {"PATH": _TOOL_PATH},
        )
    except OSError as error:
        raise PluginError(f"cannot run {argv[0]}: {error.strerror or error}") from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        raise PluginError(f"{Path(argv[0]).name} did not finish in {timeout:g}s") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out, err


def error_message(stdout: bytes, stderr: bytes, code: int) -> str:
    """One line from a failed plugin: its error object's msg and details, else what it printed."""
    text = ""
    with contextlib.suppress(ValueError):
        answer = json.loads(stdout)
        if isinstance(answer, dict) and answer.get("msg"):
            text = str(answer["msg"])
            if answer.get("details"):
                text += f": {answer['details']}"
            if answer.get("code") is not None:
                text += f" (code {answer['code']})"
    if not text:
        said = (stderr.decode(errors="replace") or stdout.decode(errors="replace")).strip()
        text = said.splitlines()[-1] if said else f"exit status {code}"
    line = " ".join(text.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def container_address(result: Mapping[str, Any], ifname: str) -> tuple[str, str]:
    """The first IPv4 address (without its prefix) and gateway an ADD result gave `ifname`
    inside the sandbox. Raises PluginError when it gave none."""
    interfaces = result.get("interfaces") or []
    for entry in result.get("ips") or []:
        address = str(entry.get("address", ""))
        if ":" in address or "/" not in address:
            continue  # IPv6, or not an address at all
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            interface = interfaces[index]
            if interface.get("name") != ifname or not interface.get("sandbox"):
                continue  # the host side of the veth, or the bridge
        return address.split("/", 1)[0], str(entry.get("gateway", ""))
    raise PluginError(f"the result gave {ifname} no IPv4 address")


def chain_name(network: str, container_id: str, prefix: str = "") -> str:
    """The iptables chain a plugin names for this container: `CNI-<prefix><sha512 hex>`, 28
    characters (pkg/utils FormatChainName: ipMasq uses no prefix, portmap `DN-`)."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return f"CNI-{prefix}{digest}"[:28]


def plugins_missing(bin_dir: Path, plugins: Sequence[str]) -> list[str]:
    return [name for name in plugins if not os.access(bin_dir / name, os.X_OK)]


# ---- plugin configs ---------------------------------------------------------------------------


def gateway_address(subnet: str) -> str:
    """The first address of `subnet`: host-local's default gateway, taken by the bridge."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def loopback_config(network: str) -> dict[str, Any]:
    return {"cniVersion": CNI_VERSION, "name": network, "type": "loopback"}


def bridge_config(
    *, network: str, bridge: str, subnet: str, ip_masq: bool, ipam_dir: Path
) -> dict[str, Any]:
    """The bridge plugin's config: the bridge is the gateway, hairpin lets a container reach
    itself through a host port, and host-local keeps its allocations in `ipam_dir`."""
    return {
        "cniVersion": CNI_VERSION,
        "name": network,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": ip_masq,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet, "gateway": gateway_address(subnet)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(ipam_dir),
        },
    }


def portmap_config(
    network: str, mappings: Sequence[Mapping[str, Any]], prev_result: dict[str, Any] | None
) -> dict[str, Any]:
    """portmap's config for `mappings` ({hostPort, containerPort, protocol}). `snat`
    masquerades host-port connections from the host itself and hairpin connections, whose
    answers could not find their way back otherwise. DEL works without `prev_result`."""
    config: dict[str, Any] = {
        "cniVersion": CNI_VERSION,
        "name": network,
        "type": "portmap",
        "snat": True,
        "capabilities": {"portMappings": True},
        "runtimeConfig": {"portMappings": [dict(m) for m in mappings]},
    }
    return with_prev_result(config, prev_result)


def with_prev_result(config: dict[str, Any], prev_result: dict[str, Any] | None) -> dict[str, Any]:
    return {**config, "prevResult": prev_result} if prev_result else config
