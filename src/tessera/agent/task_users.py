"""Per-role task users: each role's tasks run as a uid of their own, allocated on this agent.

Two tasks of different roles (teams) must not read each other's `/proc/<pid>/environ`,
sandbox files or signal each other; the kernel already enforces that between different
uids. So every role, the default role `*` included, gets one uid (and a gid of the same
number) from a reserved range. Like Kubernetes' `runAsUser` and systemd's `DynamicUser=`,
these users have no `/etc/passwd` entry: the agent never edits the host's user database,
and an image or a host needs no name for them (a task sees its uid, `HOME` and `USER` set
to its sandbox and uid). Their name, wherever Tessera needs one (checkpoints, health checks,
the fetcher), is the number itself, which `exec_spawn.lookup_user` understands.

A role's preferred uid is a hash of its name into the range, so that the same role usually
gets the same uid on every agent; a uid the host already uses (a user or group in NSS, or a
range in /etc/subuid or /etc/subgid) or another role holds is skipped. The allocation is
written to the agent's meta directory before any task uses it, so it survives a restart
or `kill -9` and a role keeps its uid.
"""

from __future__ import annotations

import grp
import hashlib
import json
import logging
import os
import pwd
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tessera.agent.disk import write_atomic
from tessera.agent.exec_spawn import RunAs

log = logging.getLogger(__name__)

# systemd's UID map (systemd.io/UIDS-GIDS) leaves 1879048192..2147352575 unused: above its
# container ranges and below its "foreign" range; useradd's subordinate ids stop at
# 600100000 (login.defs SUB_UID_MAX). 65,536 roles per agent is plenty.
DEFAULT_FIRST_UID = 1_879_048_192
DEFAULT_UID_COUNT = 65_536
STATE_FILE = "task-users.json"
_SPECIAL_UIDS = (0, 65534, 65535, 4_294_967_295)  # root, nobody, 16- and 32-bit -1


class NoFreeUid(Exception):
    """Every uid of the range is taken by the host or by other roles."""


@dataclass(frozen=True, slots=True)
class UidRange:
    """`count` uids from `first`; each allocated uid is also its own gid."""

    first: int = DEFAULT_FIRST_UID
    count: int = DEFAULT_UID_COUNT

    def __post_init__(self) -> None:
        if self.first < 1000 or self.count < 1 or self.last > 4_294_967_294:
            raise ValueError("the task uid range must lie within 1000..4294967294")
        if any(uid in self for uid in _SPECIAL_UIDS):
            raise ValueError("the task uid range must not hold nobody (65534) or 65535")

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last


def preferred_uid(role: str, uids: UidRange) -> int:
    """Where a role's uid is looked for first: the same on every agent with this range."""
    digest = hashlib.sha256(role.encode()).digest()
    return uids.first + int.from_bytes(digest[:8], "big") % uids.count


def pick_uid(role: str, uids: UidRange, taken: Callable[[int], bool]) -> int:
    """The first uid from the role's preferred one on (wrapping around) that is not taken."""
    start = preferred_uid(role, uids) - uids.first
    for step in range(uids.count):
        uid = uids.first + (start + step) % uids.count
        if not taken(uid):
            return uid
    raise NoFreeUid(f"no free uid left in {uids.first}..{uids.last} for role {role!r}")


def parse_subordinate_ids(text: str) -> list[range]:
    """The id ranges of /etc/subuid or /etc/subgid (`name:first:count` lines)."""
    ranges = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            first = int(fields[1])
            ranges.append(range(first, first + int(fields[2])))
    return ranges


class IdOwners(Protocol):
    def owner(self, uid: int) -> str | None: ...


class HostIds:
    """Which ids the host already uses: NSS users and groups, subordinate id ranges."""

    def __init__(self, subordinate_files: Iterable[str] = ("/etc/subuid", "/etc/subgid")) -> None:
        self._subordinate: list[range] = []
        for name in subordinate_files:
            try:
                with open(name) as handle:
                    self._subordinate += parse_subordinate_ids(handle.read())
            except OSError:
                continue

    def owner(self, uid: int) -> str | None:
        """Who on the host holds `uid` as a uid or gid, or None."""
        try:
            return f"user {pwd.getpwuid(uid).pw_name!r}"
        except KeyError:
            pass
        try:
            return f"group {grp.getgrgid(uid).gr_name!r}"
        except KeyError:
            pass
        if any(uid in ids for ids in self._subordinate):
            return "a range of /etc/subuid or /etc/subgid"
        return None


class TaskUsers:
    """The role → uid allocation of one agent, kept in `<meta>/task-users.json` (0600).

    Uids already allocated stay the role's even when the range changes later; a uid that
    the host has given to someone else since (checked when the file is loaded) is replaced,
    with a warning, since running as a real user's uid would expose that user's files.
    """

    def __init__(self, path: Path, uids: UidRange | None = None, host: IdOwners | None = None):
        self.path = path
        self.uids = uids or UidRange()
        self._host = host or HostIds()
        self._roles: dict[str, int] = {}
        replaced = False
        for role, uid in self._load().items():
            owner = self._host.owner(uid)
            if owner is None and uid not in self._roles.values():
                self._roles[role] = uid
                continue
            log.warning("role %r: its uid %d now belongs to %s; picking another", role, uid, owner)
            replaced = True
        if replaced:
            self._save()

    def roles(self) -> Mapping[str, int]:
        return dict(self._roles)

    def uid_of(self, role: str) -> int:
        """The role's uid, allocated (and written down) on first use."""
        uid = self._roles.get(role)
        if uid is None:
            held = set(self._roles.values())
            uid = pick_uid(role, self.uids, lambda u: u in held or self._host.owner(u) is not None)
            self._roles[role] = uid
            self._save()
            log.info("role %r runs its tasks as uid %d", role, uid)
        return uid

    def run_as(self, role: str) -> RunAs:
        uid = self.uid_of(role)
        return RunAs(str(uid), uid, uid, (uid,), "")

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        roles = data.get("roles", {}) if isinstance(data, dict) else {}
        return {str(role): uid for role, uid in roles.items() if isinstance(uid, int)}

    def _save(self) -> None:
        """Written and synced before the uid is used: a role must never get a second uid
        while files of its first one remain (a crash here loses at most an unused uid)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"first": self.uids.first, "count": self.uids.count, "roles": self._roles}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)
        for synced in (self.path, self.path.parent):  # the data, then the rename
            descriptor = os.open(synced, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
