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
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LaunchFailed(f"unknown user {name!r} on this agent") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


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


def command_line(
    spec: LaunchSpec, run_as: RunAs, env: Mapping[str, str], switch: SwitchTools | None
) -> list[str]:
    """The argv the wrapper runs: the command, behind `setpriv` and `env -i` when switching."""
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
    assignments = [f"{name}={value}" for name, value in env.items()]
    return [*drop, "--", switch.env, "-i", "--", *assignments, *argv]


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
) -> int:
    """posix_spawn the wrapper in a new session; returns its pid (also the process group)."""
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
        (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
    ]
    return os.posix_spawn(
        "/bin/sh",
        ["/bin/sh", wrapper, status_file, sandbox, *procs_files, "--", *argv],
        env,
        file_actions=file_actions,
        setsid=True,
        setsigmask=(),
        setsigdef=_RESTORED_SIGNALS,
    )
