"""Starting a task: the run-as user, the command line, and the tiny shell wrapper around it.

Each task runs under `/bin/sh tessera-task.sh`, started with posix_spawn (vfork: costs the
agent microseconds whatever its size) in a new session. The wrapper, still as the agent's
user, writes its own pid into the task's cgroup.procs files before anything else runs, so
every process of the task is born inside the cgroups; then runs the command (through
`setpriv` and `env -i`: drop to the run-as user, only then take the task's environment) and
writes the command's exit status to the task's meta directory, into space reserved when the
task was launched (a disk full by then cannot lose it). It is not the agent's child after
an agent restart, so that file is how a new agent learns how a task ended. It traps
SIGTERM so that signalling the task's process group (no cgroups) still lets it record it.

The task's environment (secrets among it) never appears in an argv: every user of the host
can read any process's `/proc/<pid>/cmdline`, and the wrapper lives as long as the task. It
comes in on an inherited memfd (`ENV_FD`) that a small loader reads once it runs as the
task's user (`ENV_LOADER`), so no root process ever has the task's environment either.

A task must reach its sandbox by its absolute path (`$MESOS_SANDBOX`), not only as its
working directory, even when the agent's work dir lies below a directory its user cannot
traverse (`/root/...`, a 0700 `mktemp -d`). Then the command starts in a mount namespace of
its own (`unshare`, still as root) where a small tmpfs covers the topmost such directory and
holds only the path down to the sandbox, with the sandbox bind-mounted at its own path:
same paths for the task, the agent and the health checks, nothing else of the work dir
visible. No directory of the host changes its permissions.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.exec_types import LaunchFailed, LaunchSpec

WRAPPER_NAME = "tessera-task.sh"
WRAPPER_SCRIPT = """\
# Tessera task wrapper: joins the task's cgroups, runs the command, records its exit status.
# Arguments: <status file> <sandbox> <cgroup.procs file>... -- <command>...
status=$1
cd -- "$2" || { echo "error cannot enter sandbox $2" > "$status"; exit 125; }
shift 2
while [ "$1" != -- ]; do
\techo "$$" > "$1" || { echo "error cannot join cgroup $1" > "$status"; exit 125; }
\tshift
done
shift
trap : TERM INT HUP
"$@"
rc=$?
# 1<> opens without truncating: the status goes into the space reserved for it at launch.
echo "$rc" 1<> "$status"
exit $rc
"""

# Python ignores SIGPIPE (and some runtimes SIGXFSZ); ignored signals survive exec.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True, slots=True)
class RunAs:
    """The identity a task runs with."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup_user(name: str) -> RunAs:
    """A user of the host's user database, or a bare uid (`"1879048192"`, as the per-role
    task users are named; `"uid:gid"` too): then the gid is the uid's unless given."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return _numeric_user(name)
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _numeric_user(name: str) -> RunAs:
    uid_text, _, gid_text = name.partition(":")
    if not uid_text.isdigit() or not (gid_text.isdigit() or not gid_text):
        raise LaunchFailed(f"unknown user {name!r} on this agent")
    uid = int(uid_text)
    try:
        known = pwd.getpwuid(uid)
    except KeyError:
        gid = int(gid_text) if gid_text else uid
        return RunAs(name, uid, gid, (gid,), "")
    if gid_text:
        return RunAs(name, uid, int(gid_text), (int(gid_text),), known.pw_dir)
    return lookup_user(known.pw_name)


def current_user() -> RunAs:
    uid = os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
        name, home = entry.pw_name, entry.pw_dir
    except KeyError:
        name, home = str(uid), os.environ.get("HOME", "/")
    return RunAs(name, uid, os.getegid(), tuple(os.getgroups()), home)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def find_executable(name: str, path: str | None) -> str | None:
    """Where `name` would be exec'd from with this PATH, or None (like `shutil.which`)."""
    if "/" in name:
        return name if os.path.exists(name) else None
    for directory in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class SwitchTools:
    """util-linux `setpriv` drops to the task user; coreutils `env -i` then sets its env."""

    setpriv: str
    env: str


# The wrapper runs as root when it switches user: the task's environment must not reach it
# (LD_PRELOAD and friends would run code as root), only the command after the switch.
ROOT_WRAPPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


# The file descriptor the task's environment arrives on (see the module's docstring).
ENV_FD = 3
# Runs as the task's user, in an empty environment (`env -i`): reads the `export` lines of
# the task's environment from ENV_FD, closes it, then execs the command. dash exports PWD.
ENV_LOADER = f'e=$(cat <&{ENV_FD}) && exec {ENV_FD}<&- && unset PWD && eval "$e" && exec "$@"'
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_script(env: Mapping[str, str]) -> bytes:
    """The task's environment as the `export NAME='value'` lines ENV_LOADER evaluates."""
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise LaunchFailed(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise LaunchFailed(f"the environment variable {name} holds a NUL character")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines).encode(errors="surrogateescape")


def command_line(
    spec: LaunchSpec,
    run_as: RunAs,
    env: Mapping[str, str],
    switch: SwitchTools | None,
    env_on_fd: bool = False,
) -> list[str]:
    """The argv the wrapper runs: the command, behind `setpriv` and `env -i` when switching.

    With `env_on_fd`, the environment is read from ENV_FD (`env_script(env)` must be there,
    see `spawn_wrapper`) instead of being passed as `NAME=value` arguments: for
    tasks, whose environment may hold secrets. Short-lived helpers (health checks, the
    fetcher's reader) keep the arguments.
    """
    if spec.args is not None:
        if find_executable(spec.args[0], env.get("PATH")) is None:
            raise LaunchFailed(f"No such file or directory: {spec.args[0]!r}")
        argv = list(spec.args)
    else:
        argv = ["/bin/sh", "-c", str(spec.command)]
    if switch is None:
        return argv
    if "=" in argv[0]:
        raise LaunchFailed(f"the executable name must not contain '=': {argv[0]!r}")
    groups = ",".join(str(gid) for gid in run_as.groups)
    drop = [switch.setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}"]
    drop.append(f"--groups={groups}" if groups else "--clear-groups")
    sandbox = env.get("MESOS_SANDBOX")
    entry = reach_sandbox(sandbox, run_as) if sandbox else []
    if env_on_fd:
        loader = ["/bin/sh", "-c", ENV_LOADER, "tessera-env"]
        return [*entry, *drop, "--", switch.env, "-i", "--", *loader, *argv]
    assignments = [f"{name}={value}" for name, value in env.items()]
    return [*entry, *drop, "--", switch.env, "-i", "--", *assignments, *argv]


# Runs as root in the task's new mount namespace. `.` stays the real sandbox after the tmpfs
# hides it (the working directory holds it), and `--no-canonicalize` keeps mount from
# resolving `.` back into a path, which would now lead into the tmpfs.
REACH_SCRIPT = """\
a=$1 s=$2
shift 2
cd -- "$s" &&
mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec tessera-sandbox "$a" &&
mkdir -p -- "$s" && mount --no-canonicalize --bind . "$s" && cd -- "$s" && exec "$@"
echo "tessera: cannot make the sandbox $s reachable for the task" >&2
exit 125
"""


def reach_sandbox(sandbox: str, run_as: RunAs) -> list[str]:
    """The argv prefix that lets `run_as` reach `sandbox` by its path (see the module's
    docstring); empty when it already can or when this host cannot make mount namespaces."""
    cover = blocking_directory(sandbox, run_as)
    unshare = mount_namespaces()
    if cover is None or unshare is None:
        return []
    script = ["/bin/sh", "-c", REACH_SCRIPT, "tessera-sandbox", cover, sandbox]
    return [unshare, "--mount", "--propagation", "private", "--", *script]


def blocking_directory(path: str, run_as: RunAs) -> str | None:
    """The topmost directory above `path` that `run_as` may not traverse (by its mode
    bits; ACLs are not read), or None. `/` itself cannot be covered, so it never counts."""
    for directory in reversed(Path(path).parents[:-1]):  # from just below / downwards
        try:
            status = os.stat(directory)
        except OSError:
            return None
        if not _may_traverse(status, run_as):
            return str(directory)
    return None


def _may_traverse(status: os.stat_result, run_as: RunAs) -> bool:
    if run_as.uid == 0:
        return True
    if status.st_uid == run_as.uid:
        return bool(status.st_mode & 0o100)
    if status.st_gid == run_as.gid or status.st_gid in run_as.groups:
        return bool(status.st_mode & 0o010)
    return bool(status.st_mode & 0o001)


@functools.cache
def mount_namespaces() -> str | None:
    """`unshare`'s path when this process may make mount namespaces and mount in them
    (root with CAP_SYS_ADMIN, no seccomp or LSM in the way); tried once."""
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if os.geteuid() != 0 or unshare is None or mount is None:
        return None
    target = "/tmp" if os.path.isdir("/tmp") else "/"
    probe = [unshare, "--mount", "--propagation", "private", "--"]
    probe += [mount, "-t", "tmpfs", "-o", "size=4k", "tessera-probe", target]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, env=ROOT_WRAPPER_ENV)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return unshare if done.returncode == 0 else None


def task_environment(spec: LaunchSpec, run_as: RunAs, sandbox: str) -> dict[str, str]:
    env = dict(spec.env)
    env["MESOS_SANDBOX"] = sandbox
    env.setdefault("HOME", run_as.home if os.path.isdir(run_as.home) else sandbox)
    env.setdefault("USER", run_as.name)
    env.setdefault("LOGNAME", run_as.name)
    return env


def spawn_wrapper(
    wrapper: str,
    *,
    status_file: str,
    sandbox: str,
    procs_files: Sequence[str],
    argv: Sequence[str],
    env: Mapping[str, str],
    stdout_fd: int,
    stderr_fd: int,
    env_data: bytes | None = None,
) -> int:
    """posix_spawn the wrapper in a new session; returns its pid (also the process group).

    `env_data` (the task's `env_script`) is handed over on ENV_FD, in memory only."""
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
        (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
    ]
    memfd = _memfd(env_data) if env_data is not None else None
    if memfd is not None:
        file_actions.append((os.POSIX_SPAWN_DUP2, memfd, ENV_FD))
    try:
        return os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", wrapper, status_file, sandbox, *procs_files, "--", *argv],
            env,
            file_actions=file_actions,
            setsid=True,
            setsigmask=(),
            setsigdef=_RESTORED_SIGNALS,
        )
    finally:
        if memfd is not None:
            os.close(memfd)


def _memfd(data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start; never ENV_FD
    itself (dup2 onto itself would keep it close-on-exec)."""
    memfd = os.memfd_create("tessera-task-env", os.MFD_CLOEXEC)
    if memfd == ENV_FD:
        memfd, spare = os.dup(memfd), memfd
        os.close(spare)
    view = memoryview(data)
    while view:
        view = view[os.write(memfd, view) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    return memfd
