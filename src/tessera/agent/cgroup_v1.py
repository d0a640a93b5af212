"""cgroup v1 driver: one directory per controller hierarchy (cpu, cpuacct, memory, pids)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

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
    signal_all,
    subtree_dirs,
    subtree_pids,
    write_text,
)

REQUIRED_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")


class CgroupV1:
    """One task's cgroups, a directory in each v1 hierarchy."""

    version = "v1"

    def __init__(self, dirs: Mapping[str, str], leaf: str | None = None) -> None:
        self._dirs = dict(dirs)
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(self._dirs.values()))
        joined = [f"{path}/{leaf}" if leaf else path for path in self.paths]
        self.procs_files: tuple[str, ...] = tuple(f"{path}/cgroup.procs" for path in joined)

    def pids(self) -> list[int]:
        """Every process of the task, including those in cgroups below its own (a container).

        All hierarchies are read: a wrapper that is still joining them may be in some only
        (an orphan killed during recovery must not slip through between two of them)."""
        found: dict[int, None] = {}
        for path in self.paths:
            found.update(dict.fromkeys(subtree_pids(path)))
        return list(found)

    def oom_kills(self) -> int | None:
        """Processes the OOM killer took here or below (v1 counts each kill only in the
        victim's own cgroup: a container's); None on kernels without the counter (< 4.13)."""
        total: int | None = None
        for directory in subtree_dirs(self._dirs["memory"]):
            try:
                found = parse_keyed(read_text(f"{directory}/memory.oom_control")).get("oom_kill")
            except FileNotFoundError:
                continue
            if found is not None:
                total = (total or 0) + found
        if total is None and not os.path.isdir(self._dirs["memory"]):
            return 0
        return total

    def limit_hits(self) -> int:
        return read_int(f"{self._dirs['memory']}/memory.failcnt")

    def usage(self) -> CgroupUsage:
        memory = self._dirs["memory"]
        try:
            limit = parse_limit(read_text(f"{memory}/memory.limit_in_bytes"))
        except (OSError, ValueError):
            limit = None
        return CgroupUsage(
            cpu_seconds=read_int(f"{self._dirs['cpuacct']}/cpuacct.usage") / 1e9,
            mem_bytes=read_int(f"{memory}/memory.usage_in_bytes"),
            mem_limit_bytes=limit,
            pids=read_int(f"{self._dirs['pids']}/pids.current"),
        )

    def signal(self, sig: signal.Signals, *, spare: int | None = None) -> int:
        return signal_all(self.pids(), sig, spare=spare)

    def kill(self) -> int:
        return signal_all(self.pids(), signal.SIGKILL)

    def remove(self) -> bool:
        return remove_dirs(self.paths)


class CgroupV1Driver:
    """Creates task cgroups under `<hierarchy>/<prefix>/` in every required v1 hierarchy."""

    version = "v1"

    def __init__(self, mounts: Mapping[str, str], prefix: str) -> None:
        missing = [name for name in REQUIRED_CONTROLLERS if name not in mounts]
        if missing:
            raise ValueError(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
        self._parents = {name: os.path.join(mounts[name], prefix) for name in REQUIRED_CONTROLLERS}
        self._mounts = {name: mounts[name] for name in REQUIRED_CONTROLLERS}
        self._prefix = prefix
        self._has_memsw = False

    def prepare(self) -> None:
        """Create the prefix directories; learn whether swap accounting exists."""
        for parent in dict.fromkeys(self._parents.values()):
            os.makedirs(parent, exist_ok=True)
            ensure_writable(parent)
        self._has_memsw = os.path.exists(f"{self._parents['memory']}/memory.memsw.limit_in_bytes")

    def release(self) -> None:
        """Remove our prefix directories if no task cgroup is left in them."""
        for mount in dict.fromkeys(self._mounts.values()):
            remove_prefix(mount, self._prefix)

    def describe(self) -> dict[str, object]:
        return {"hierarchies": dict(self._parents), "swap_accounting": self._has_memsw}

    def _dirs(self, name: str) -> dict[str, str]:
        return {controller: f"{parent}/{name}" for controller, parent in self._parents.items()}

    def create(self, name: str, limits: CgroupLimits, leaf: str | None = None) -> CgroupV1:
        """The task's cgroups with its limits; with `leaf`, the wrapper joins a child cgroup
        of that name (a container task: runc makes another child for the container)."""
        cgroup = CgroupV1(self._dirs(name), leaf)
        created: list[str] = []
        try:
            for path in cgroup.paths:
                os.mkdir(path)
                created.append(path)
                if leaf:
                    os.mkdir(f"{path}/{leaf}")
            self._write_limits(self._dirs(name), limits)
        except BaseException:
            remove_dirs(reversed(created))
            raise
        return cgroup

    def _write_limits(self, dirs: Mapping[str, str], limits: CgroupLimits) -> None:
        cpu, memory = dirs["cpu"], dirs["memory"]
        write_text(f"{cpu}/cpu.shares", str(limits.shares))
        if limits.cpu_hard_limit:
            write_text(f"{cpu}/cpu.cfs_period_us", str(CFS_PERIOD_US))
            write_text(f"{cpu}/cpu.cfs_quota_us", str(limits.cfs_quota_us))
        write_text(f"{memory}/memory.limit_in_bytes", str(limits.mem_bytes))
        if self._has_memsw:
            # memory+swap at the same limit: the task cannot swap its way past it.
            write_text(f"{memory}/memory.memsw.limit_in_bytes", str(limits.mem_bytes))
        pids_max = "max" if limits.pids_limit is None else str(limits.pids_limit)
        write_text(f"{dirs['pids']}/pids.max", pids_max)

    def attach(self, name: str) -> CgroupV1 | None:
        """A task's existing cgroups (after an agent restart), if any of them is still there."""
        dirs = self._dirs(name)
        return CgroupV1(dirs) if any(os.path.isdir(path) for path in dirs.values()) else None

    def names(self) -> list[str]:
        """Task cgroups that exist under the prefix (to find orphans after a restart)."""
        names: set[str] = set()
        for parent in self._parents.values():
            try:
                names.update(entry.name for entry in os.scandir(parent) if entry.is_dir())
            except FileNotFoundError:
                continue
        return sorted(names)
