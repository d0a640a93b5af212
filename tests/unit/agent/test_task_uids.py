"""Per-role task users: the uid allocation, numeric users, the way into the sandbox, and the
way the environment reaches the task (never in an argv)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent import exec_spawn
from tessera.agent.exec_spawn import (
    ENV_FD,
    ENV_LOADER,
    RunAs,
    SwitchTools,
    blocking_directory,
    command_line,
    env_script,
    lookup_user,
)
from tessera.agent.exec_types import LaunchFailed, LaunchSpec
from tessera.agent.task_users import (
    DEFAULT_FIRST_UID,
    NoFreeUid,
    TaskUsers,
    UidRange,
    parse_subordinate_ids,
    pick_uid,
    preferred_uid,
)

SMALL = UidRange(first=2_000_000, count=4)


class FakeHost:
    """Host ids for tests: `claimed` uids belong to someone on the host."""

    def __init__(self, *claimed: int) -> None:
        self.claimed = set(claimed)

    def owner(self, uid: int) -> str | None:
        return "user 'someone'" if uid in self.claimed else None


def test_the_range_keeps_clear_of_special_ids() -> None:
    assert DEFAULT_FIRST_UID in UidRange()
    assert UidRange().last == DEFAULT_FIRST_UID + 65_535
    for first, count in ((0, 10), (999, 10), (60_000, 10_000), (4_294_967_290, 10), (5000, 0)):
        with pytest.raises(ValueError):
            UidRange(first, count)


def test_a_role_prefers_the_same_uid_everywhere() -> None:
    assert preferred_uid("team-a", UidRange()) == preferred_uid("team-a", UidRange())
    assert preferred_uid("team-a", UidRange()) != preferred_uid("team-b", UidRange())
    assert all(preferred_uid(f"r{i}", SMALL) in SMALL for i in range(50))


def test_taken_uids_are_skipped_and_the_range_wraps() -> None:
    start = preferred_uid("web", SMALL)
    assert pick_uid("web", SMALL, lambda uid: False) == start
    others = {start, SMALL.first + (start - SMALL.first + 1) % SMALL.count}
    picked = pick_uid("web", SMALL, lambda uid: uid in others)
    assert picked in SMALL and picked not in others
    with pytest.raises(NoFreeUid):
        pick_uid("web", SMALL, lambda uid: True)


def test_subordinate_id_ranges_are_read() -> None:
    text = "alice:100000:65536\n# comment\nbob:165536:65536\nbroken\n"
    assert parse_subordinate_ids(text) == [range(100000, 165536), range(165536, 231072)]


def test_allocation_is_persisted_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "meta" / "task-users.json"
    users = TaskUsers(path, SMALL, FakeHost())
    a, b, default = users.uid_of("a"), users.uid_of("b"), users.uid_of("*")
    assert len({a, b, default}) == 3
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["roles"] == {"a": a, "b": b, "*": default}
    again = TaskUsers(path, UidRange(first=3_000_000, count=10), FakeHost())
    assert again.roles() == {"a": a, "b": b, "*": default}  # a new range keeps old uids
    assert again.uid_of("c") in range(3_000_000, 3_000_010)
    assert again.run_as("a") == RunAs(str(a), a, a, (a,), "")


def test_host_ids_are_never_allocated(tmp_path: Path) -> None:
    claimed = [SMALL.first, SMALL.first + 1, SMALL.first + 2]
    users = TaskUsers(tmp_path / "users.json", SMALL, FakeHost(*claimed))
    assert users.uid_of("a") == SMALL.first + 3
    with pytest.raises(NoFreeUid):
        users.uid_of("b")


def test_a_uid_the_host_took_since_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    first = TaskUsers(path, SMALL, FakeHost()).uid_of("a")
    users = TaskUsers(path, SMALL, FakeHost(first))
    assert users.uid_of("a") != first
    assert json.loads(path.read_text())["roles"]["a"] == users.uid_of("a")


def test_numeric_users_need_no_passwd_entry() -> None:
    assert lookup_user("2000001") == RunAs("2000001", 2000001, 2000001, (2000001,), "")
    assert lookup_user("2000001:5") == RunAs("2000001:5", 2000001, 5, (5,), "")
    assert lookup_user("0").name == "root"
    for bad in ("no-such-user-x", "12:ab", "-1"):
        with pytest.raises(LaunchFailed, match="unknown user"):
            lookup_user(bad)


@pytest.fixture
def tree() -> Iterator[Path]:
    """base (0755) / open (0755) / closed (0700, root's) / inner (0755) / sandbox."""
    base = Path(tempfile.mkdtemp(prefix="tessera-reach-"))
    base.chmod(0o755)
    inner = base / "open" / "closed" / "inner"
    (inner / "sandbox").mkdir(parents=True)
    (base / "open" / "closed").chmod(0o700)
    yield base
    (base / "open" / "closed").chmod(0o755)
    for directory in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
        directory.rmdir()
    base.rmdir()


def test_the_topmost_untraversable_directory_is_found(tree: Path) -> None:
    if any(not os.stat(p).st_mode & 0o001 for p in tree.parents):
        pytest.skip(f"{tree} has a parent that others cannot traverse")
    sandbox = str(tree / "open" / "closed" / "inner" / "sandbox")
    stranger = RunAs("2000001", 2000001, 2000001, (2000001,), "")
    owner_uid = os.stat(tree / "open" / "closed").st_uid
    owner = RunAs("owner", owner_uid, 2000001, (), "")
    member = RunAs("m", 2000001, os.stat(tree / "open" / "closed").st_gid, (), "")
    assert blocking_directory(sandbox, stranger) == str(tree / "open" / "closed")
    assert blocking_directory(sandbox, owner) is None
    assert blocking_directory(sandbox, member) == str(tree / "open" / "closed")  # 0700: no g+x
    assert blocking_directory(str(tree / "open" / "x"), stranger) is None


def test_a_blocked_sandbox_is_entered_through_a_mount_namespace(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exec_spawn, "mount_namespaces", lambda: "/usr/bin/unshare")
    switch = SwitchTools("/usr/bin/setpriv", "/usr/bin/env")
    user = RunAs("2000001", 2000001, 2000001, (2000001,), "")
    spec = LaunchSpec("t.1", args=("/bin/true",))
    blocked = str(tree / "open" / "closed" / "inner" / "sandbox")
    argv = command_line(spec, user, {"MESOS_SANDBOX": blocked}, switch)
    assert argv[:5] == ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]
    assert argv[9:11] == [str(tree / "open" / "closed"), blocked]
    assert argv[11] == "/usr/bin/setpriv" and argv[-1] == "/bin/true"
    reachable = str(tree / "open" / "sandbox")
    if blocking_directory(reachable, user) is None:
        assert command_line(spec, user, {"MESOS_SANDBOX": reachable}, switch)[0] == argv[11]
    # Without a sandbox (the fetcher's `cat`) or without switching, nothing is added.
    assert command_line(spec, user, {}, switch)[0] == "/usr/bin/setpriv"
    assert command_line(spec, user, {"MESOS_SANDBOX": blocked}, None) == ["/bin/true"]


def test_the_environment_survives_the_loader_byte_for_byte() -> None:
    env = {"A": "x y", "Q": 'it\'s "$HOME" `id` \\', "NL": "one\ntwo\n", "E": ""}
    # The script arrives on stdin here; a first shell moves it to ENV_FD, as spawn does.
    to_fd = f'exec {ENV_FD}<&0 0</dev/null; exec "$@"'
    loader = ["env", "-i", "/bin/sh", "-c", ENV_LOADER, "tessera-env", "env", "-0"]
    done = subprocess.run(
        ["/bin/sh", "-c", to_fd, "sh", *loader],
        input=env_script(env),
        capture_output=True,
        check=True,
    )
    seen = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)
    assert seen == env


def test_bad_names_never_reach_the_shell() -> None:
    for name in ("A-B", "1A", "A B", "A;rm"):
        with pytest.raises(LaunchFailed, match="invalid environment variable name"):
            env_script({name: "x"})
    with pytest.raises(LaunchFailed, match="NUL"):
        env_script({"A": "x\0y"})


def test_tasks_take_their_environment_from_a_descriptor() -> None:
    switch = SwitchTools("/usr/bin/setpriv", "/usr/bin/env")
    user = RunAs("2000001", 2000001, 2000001, (2000001,), "")
    spec = LaunchSpec("t.1", args=("/bin/true",))
    argv = command_line(spec, user, {"SECRET": "canary"}, switch, env_on_fd=True)
    assert not any("canary" in arg for arg in argv)
    assert argv[-5:] == ["/bin/sh", "-c", ENV_LOADER, "tessera-env", "/bin/true"]
