"""Small helpers shared by the cgroup v1 and v2 drivers: limits, file reads/writes, parsing."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

MIB = 1024 * 1024
CFS_PERIOD_US = 100_000
MIN_SHARES = 2
MAX_SHARES = 262_144


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What a task's cgroup enforces, in the units the task spec uses."""

    cpus: float
    mem_mib: float
    cpu_hard_limit: bool = False
    pids_limit: int | None = None

    @property
    def mem_bytes(self) -> int:
        return int(self.mem_mib * MIB)

    @property
    def shares(self) -> int:
        return cpu_shares(self.cpus)

    @property
    def cfs_quota_us(self) -> int:
        # The kernel refuses quotas below 1 ms.
        return max(1000, int(self.cpus * CFS_PERIOD_US))


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    cpu_seconds: float
    mem_bytes: int
    mem_limit_bytes: int | None
    pids: int


def cpu_shares(cpus: float) -> int:
    """Mesos' mapping: 1024 shares per cpu, never below the kernel's minimum of 2."""
    return min(MAX_SHARES, max(MIN_SHARES, int(cpus * 1024)))


def shares_to_weight(shares: int) -> int:
    """Map v1 cpu.shares [2, 262144] onto v2 cpu.weight [1, 10000] the way runc and systemd do."""
    shares = min(MAX_SHARES, max(MIN_SHARES, shares))
    return 1 + ((shares - 2) * 9999) // 262142


def parse_keyed(text: str) -> dict[str, int]:
    """Parse `key value` lines (memory.events, cpu.stat, memory.oom_control, memory.stat)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def parse_limit(text: str) -> int | None:
    """A limit file's value; None for `max` (v2) or the v1 "unlimited" page-rounded maximum."""
    value = text.split()[0] if text.split() else "max"
    if value == "max":
        return None
    number = int(value)
    return None if number >= (1 << 62) else number


def parse_pids(text: str) -> list[int]:
    return [int(line) for line in text.split()]


def subtree_pids(path: str) -> list[int]:
    """Pids in the cgroup at `path` and in every cgroup below it (a container's own cgroup
    sits below its task's); [] when the cgroup is gone."""
    pids: list[int] = []
    for directory, _, _ in os.walk(path):
        try:
            pids.extend(parse_pids(read_text(f"{directory}/cgroup.procs")))
        except FileNotFoundError:
            continue
    return pids


def subtree_dirs(path: str) -> list[str]:
    """The cgroup at `path` and its descendants, deepest first (the order rmdir needs)."""
    return [directory for directory, _, _ in os.walk(path, topdown=False)]


def read_text(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def write_text(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def read_int(path: str, default: int = 0) -> int:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return default


def signal_all(pids: Iterable[int], sig: signal.Signals, *, spare: int | None = None) -> int:
    """Send `sig` to every pid but `spare`; return how many were still there to signal."""
    sent = 0
    for pid in pids:
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


def remove_dirs(paths: Iterable[str]) -> bool:
    """rmdir each cgroup directory and what is below it; True when none is left (EBUSY means
    processes remain)."""
    all_gone = True
    for path in [below for top in paths for below in subtree_dirs(top) or [top]]:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            all_gone = False
    return all_gone


def ensure_writable(path: str) -> None:
    """Raise PermissionError unless we may create task cgroups in `path` (it may pre-exist)."""
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot create cgroups here", path)


def remove_prefix(mount: str, prefix: str) -> None:
    """rmdir `<mount>/<prefix>` and its empty parents up to the mount; stops at the first busy."""
    parts = prefix.split("/")
    while parts:
        try:
            os.rmdir(os.path.join(mount, *parts))
        except OSError:
            return
        parts.pop()
