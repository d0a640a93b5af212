"""Which cgroup hierarchy a task can live in here: pure v2, v1, or none (process groups only).

Detection reads /proc/self/mountinfo once at agent start. Pure v2 wins when the unified
hierarchy offers cpu, memory and pids (we enable them down to our prefix); otherwise v1 when
cpu, cpuacct, memory and pids hierarchies are mounted; otherwise there are no cgroups and
the executor falls back to process groups, which the agent must say loudly.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Literal, Protocol

from tessera.agent import cgroup_v1, cgroup_v2
from tessera.agent.cgroup_files import CgroupLimits, CgroupUsage, read_text

Isolation = Literal["auto", "cgroups", "none"]


class TaskCgroup(Protocol):
    """One task's cgroup(s): what the executor reads and signals."""

    version: str
    paths: tuple[str, ...]
    procs_files: tuple[str, ...]

    def pids(self) -> list[int]: ...
    def oom_kills(self) -> int | None: ...
    def limit_hits(self) -> int: ...
    def usage(self) -> CgroupUsage: ...
    def signal(self, sig: signal.Signals, *, spare: int | None = None) -> int: ...
    def kill(self) -> int: ...
    def remove(self) -> bool: ...


class CgroupDriver(Protocol):
    version: str

    def prepare(self) -> None: ...
    def release(self) -> None: ...
    def describe(self) -> dict[str, object]: ...
    def create(self, name: str, limits: CgroupLimits, leaf: str | None = None) -> TaskCgroup: ...
    def attach(self, name: str) -> TaskCgroup | None: ...
    def names(self) -> list[str]: ...


class CgroupsUnavailable(RuntimeError):
    """isolation="cgroups" was asked for, but no writable cgroup hierarchy is usable."""


@dataclass(frozen=True, slots=True)
class CgroupMount:
    fstype: str
    mount_point: str
    super_options: frozenset[str]


@dataclass(frozen=True, slots=True)
class Detection:
    driver: CgroupDriver | None
    reason: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts in a /proc/<pid>/mountinfo text."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, tail_fields = head.split(), tail.split()
        if len(fields) < 5 or len(tail_fields) < 3 or tail_fields[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            CgroupMount(
                fstype=tail_fields[0],
                mount_point=_unescape(fields[4]),
                super_options=frozenset(tail_fields[2].split(",")),
            )
        )
    return mounts


def _v2_controllers(mount_point: str) -> set[str]:
    try:
        return set(read_text(f"{mount_point}/cgroup.controllers").split())
    except OSError:
        return set()


def detect(mounts: list[CgroupMount], prefix: str) -> Detection:
    """Pick the driver for this machine from its cgroup mounts (no writes yet)."""
    unified = [mount for mount in mounts if mount.fstype == "cgroup2"]
    unified.sort(key=lambda mount: mount.mount_point != "/sys/fs/cgroup")
    for mount in unified:
        if set(cgroup_v2.REQUIRED_CONTROLLERS) <= _v2_controllers(mount.mount_point):
            return Detection(cgroup_v2.CgroupV2Driver(mount.mount_point, prefix), "cgroup v2")
    v1_mounts: dict[str, str] = {}
    for mount in mounts:
        if mount.fstype == "cgroup":
            for controller in cgroup_v1.REQUIRED_CONTROLLERS:
                if controller in mount.super_options:
                    v1_mounts.setdefault(controller, mount.mount_point)
    missing = [name for name in cgroup_v1.REQUIRED_CONTROLLERS if name not in v1_mounts]
    if not missing:
        return Detection(cgroup_v1.CgroupV1Driver(v1_mounts, prefix), "cgroup v1")
    why = "no cgroup2 hierarchy offers cpu, memory and pids, and cgroup v1 lacks " + ", ".join(
        missing
    )
    return Detection(None, why)


def select_driver(isolation: str, prefix: str) -> Detection:
    """Detect, then create our prefix; a failure degrades to no cgroups unless they are required."""
    if isolation == "none":
        return Detection(None, "cgroup isolation disabled by configuration (isolation=none)")
    try:
        mountinfo = read_text("/proc/self/mountinfo")
    except OSError as error:
        mountinfo, detection = "", Detection(None, f"cannot read mountinfo: {error}")
    detection = detect(parse_mountinfo(mountinfo), prefix) if mountinfo else detection
    if detection.driver is not None:
        try:
            detection.driver.prepare()
        except OSError as error:
            detection = Detection(None, f"{detection.reason} is not writable here: {error}")
    if detection.driver is None and isolation == "cgroups":
        raise CgroupsUnavailable(detection.reason)
    return detection


def clean_prefix(prefix: str) -> str:
    """A relative cgroup path made of safe components, e.g. `tessera/agent-1`."""
    parts = [part for part in prefix.strip().split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"invalid cgroup prefix {prefix!r}")
    return "/".join(parts)


__all__ = [
    "CgroupDriver",
    "CgroupLimits",
    "CgroupUsage",
    "CgroupsUnavailable",
    "Detection",
    "TaskCgroup",
    "clean_prefix",
    "detect",
    "parse_mountinfo",
    "select_driver",
]
