"""cgroup v2 driver: one directory per task in the unified hierarchy (cpu, memory, pids)."""

from __future__ import annotations

import os
import signal

from tessera.agent.cgroup_files import (
    CFS_PERIOD_US,
    CgroupLimits,
    CgroupUsage,
    ensure_writable,
    parse_keyed,
    parse_limit,
    read_int,
    read_text,
    remove_dirs,
    remove_prefix,
    shares_to_weight,
    signal_all,
    subtree_pids,
    write_text,
)

REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")


class CgroupV2:
    """One task's cgroup in the unified hierarchy."""

    version = "v2"

    def __init__(self, path: str, *, can_kill: bool, leaf: str | None = None) -> None:
        self._path = path
        self._can_kill = can_kill
        self.paths: tuple[str, ...] = (path,)
        joined = f"{path}/{leaf}" if leaf else path
        self.procs_files: tuple[str, ...] = (f"{joined}/cgroup.procs",)

    def pids(self) -> list[int]:
        """Every process of the task, including those in cgroups below its own (a container)."""
        return subtree_pids(self._path)

    def oom_kills(self) -> int | None:
        try:
            return parse_keyed(read_text(f"{self._path}/memory.events")).get("oom_kill", 0)
        except FileNotFoundError:
            return 0

    def limit_hits(self) -> int:
        try:
            return parse_keyed(read_text(f"{self._path}/memory.events")).get("max", 0)
        except FileNotFoundError:
            return 0

    def usage(self) -> CgroupUsage:
        try:
            cpu_usec = parse_keyed(read_text(f"{self._path}/cpu.stat")).get("usage_usec", 0)
        except FileNotFoundError:
            cpu_usec = 0
        try:
            limit = parse_limit(read_text(f"{self._path}/memory.max"))
        except (OSError, ValueError):
            limit = None
        return CgroupUsage(
            cpu_seconds=cpu_usec / 1e6,
            mem_bytes=read_int(f"{self._path}/memory.current"),
            mem_limit_bytes=limit,
            pids=read_int(f"{self._path}/pids.current"),
        )

    def signal(self, sig: signal.Signals, *, spare: int | None = None) -> int:
        return signal_all(self.pids(), sig, spare=spare)

    def kill(self) -> int:
        """SIGKILL everything; `cgroup.kill` (Linux 5.14+) does it atomically, racing no fork."""
        pids = self.pids()
        if pids and self._can_kill:
            write_text(f"{self._path}/cgroup.kill", "1")
            return len(pids)
        return signal_all(pids, signal.SIGKILL)

    def remove(self) -> bool:
        return remove_dirs(self.paths)


class CgroupV2Driver:
    """Creates task cgroups under `<mount>/<prefix>/`, enabling cpu, memory, pids on the way."""

    version = "v2"

    def __init__(self, mount: str, prefix: str) -> None:
        self._mount = mount
        self._prefix = prefix
        self._parent = os.path.join(mount, prefix)
        self._has_swap = False
        self._can_kill = False

    def prepare(self) -> None:
        """Enable the controllers from the root down to the prefix (leaves take no processes)."""
        wanted = " ".join(f"+{name}" for name in REQUIRED_CONTROLLERS)
        level = self._mount
        enable_controllers(level, wanted)
        for part in self._prefix.split("/"):
            level = f"{level}/{part}"
            os.makedirs(level, exist_ok=True)
            enable_controllers(level, wanted)
        ensure_writable(self._parent)
        self._has_swap = os.path.exists(f"{self._parent}/memory.swap.max")
        self._can_kill = os.path.exists(f"{self._parent}/cgroup.kill")

    def release(self) -> None:
        """Remove our prefix directories if no task cgroup is left in them."""
        remove_prefix(self._mount, self._prefix)

    def describe(self) -> dict[str, object]:
        return {
            "hierarchy": self._parent,
            "swap_accounting": self._has_swap,
            "cgroup_kill": self._can_kill,
        }

    def create(self, name: str, limits: CgroupLimits, leaf: str | None = None) -> CgroupV2:
        """The task's cgroup with its limits; with `leaf`, the wrapper joins a child cgroup of
        that name, since a v2 cgroup with processes cannot have controlled children (runc
        makes the container's cgroup beside it)."""
        path = f"{self._parent}/{name}"
        os.mkdir(path)
        try:
            if leaf:
                enable_controllers(path, " ".join(f"+{n}" for n in REQUIRED_CONTROLLERS))
                os.mkdir(f"{path}/{leaf}")
            write_text(f"{path}/cpu.weight", str(shares_to_weight(limits.shares)))
            if limits.cpu_hard_limit:
                write_text(f"{path}/cpu.max", f"{limits.cfs_quota_us} {CFS_PERIOD_US}")
            write_text(f"{path}/memory.max", str(limits.mem_bytes))
            if self._has_swap:
                write_text(f"{path}/memory.swap.max", "0")
            pids_max = "max" if limits.pids_limit is None else str(limits.pids_limit)
            write_text(f"{path}/pids.max", pids_max)
        except BaseException:
            remove_dirs([path])
            raise
        return CgroupV2(path, can_kill=self._can_kill, leaf=leaf)

    def attach(self, name: str) -> CgroupV2 | None:
        path = f"{self._parent}/{name}"
        return CgroupV2(path, can_kill=self._can_kill) if os.path.isdir(path) else None

    def names(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self._parent) if entry.is_dir())
        except FileNotFoundError:
            return []


def enable_controllers(path: str, wanted: str) -> None:
    """Write `+cpu +memory +pids` to subtree_control unless they are already enabled there."""
    control = f"{path}/cgroup.subtree_control"
    try:
        enabled = {name.lstrip("+") for name in read_text(control).split()}
    except FileNotFoundError:
        enabled = set()
    if not {name.lstrip("+") for name in wanted.split()} <= enabled:
        write_text(control, wanted)
