"""The OCI runtime config (`config.json`) of a container task, built by pure functions.

Everything here is a function of its arguments: the command tables of both containerizers,
the environment, the user, the mounts and the Docker-like defaults (namespaces, masked paths,
capabilities). No I/O: the runtime reads the image's passwd and group files and hands their
text in.

Command tables (Mesos `docker/runtime.cpp`; Docker containerizer docs):

  type    given        process args
  MESOS   cmd          /bin/sh -c cmd                 (the image's entrypoint and cmd ignored)
  MESOS   args         Entrypoint + args              (args alone when there is no entrypoint)
  DOCKER  cmd          Entrypoint + [/bin/sh, -c, cmd]
  DOCKER  args         Entrypoint + args              (args replace the image's Cmd)
  both    neither      Entrypoint + Cmd
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SANDBOX_PATH = "/mnt/mesos/sandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_VERSION = "1.0.2"

# Docker's default capability set (moby `oci/caps/defaults.go`).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
# Every capability of Linux 6.x, for privileged containers.
ALL_CAPABILITIES = (
    *DEFAULT_CAPABILITIES,
    "CAP_DAC_READ_SEARCH",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LEASE",
    "CAP_AUDIT_CONTROL",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# What runc's own `runc spec` masks and makes read-only (unprivileged containers only).
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
DEFAULT_SHM_BYTES = 64 * 1024 * 1024


class BundleError(ValueError):
    """The container cannot be configured (no command, unknown user, bad parameter)."""


# ---- the command ----------------------------------------------------------------------------


def process_args(
    kind: str,
    cmd: str | None,
    args: Sequence[str] | None,
    image_config: Mapping[str, Any],
) -> list[str]:
    """The container's argv by the table above; `kind` is DOCKER or MESOS."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    image_cmd = list(image_config.get("Cmd") or [])
    if cmd is not None:
        shell = ["/bin/sh", "-c", cmd]
        argv = shell if kind == "MESOS" else entrypoint + shell
    elif args is not None:
        argv = entrypoint + list(args)
    else:
        argv = entrypoint + image_cmd
    if not argv:
        raise BundleError(
            "the image has no entrypoint and no cmd, and the app gives neither cmd nor args"
        )
    return argv


# ---- the user -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""


def _passwd_entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str | None, passwd: str, group: str) -> ContainerUser:
    """`user`, `uid`, `user:group` or `uid:gid` (Docker's `User`) against the image's
    /etc/passwd and /etc/group texts; empty or None is root."""
    if not spec:
        spec = "0"
    user_part, _, group_part = spec.partition(":")
    users = _passwd_entries(passwd)
    groups = _passwd_entries(group)
    entry = next(
        (e for e in users if len(e) >= 4 and (e[0] == user_part or e[2] == user_part)), None
    )
    if entry is not None:
        uid, gid, home, name = int(entry[2]), int(entry[3]), _field(entry, 5, "/"), entry[0]
    elif user_part.isdigit():
        uid, gid, home, name = int(user_part), int(user_part), "/", ""
    else:
        raise BundleError(f"user {user_part!r} is not in the image's /etc/passwd")
    if group_part:
        found = next(
            (g for g in groups if len(g) >= 3 and (g[0] == group_part or g[2] == group_part)),
            None,
        )
        if found is not None:
            gid = int(found[2])
        elif group_part.isdigit():
            gid = int(group_part)
        else:
            raise BundleError(f"group {group_part!r} is not in the image's /etc/group")
    extra = tuple(
        sorted(
            {
                int(g[2])
                for g in groups
                if len(g) >= 4 and g[2].isdigit() and name and name in g[3].split(",")
            }
            - {gid}
        )
    )
    return ContainerUser(uid, gid, extra, home or "/", name)


def _field(entry: list[str], index: int, default: str) -> str:
    return entry[index] if len(entry) > index and entry[index] else default


# ---- parameters -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parameters:
    """The supported `docker.parameters`, applied over the image's settings."""

    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    shm_bytes: int = DEFAULT_SHM_BYTES


def parse_parameters(pairs: Sequence[tuple[str, str]]) -> Parameters:
    env: list[tuple[str, str]] = []
    labels: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in ("env", "e"):
            name, _, content = value.partition("=")
            env.append((name, content))
        elif key in ("label", "l"):
            name, _, content = value.partition("=")
            labels.append((name, content))
        elif key in ("user", "u"):
            values["user"] = value
        elif key in ("workdir", "w"):
            values["workdir"] = value
        elif key in ("hostname", "h"):
            values["hostname"] = value
        elif key == "shm-size":
            values["shm_bytes"] = parse_size(value)
        else:
            raise BundleError(f"docker parameter {key!r} is not supported")
    return Parameters(env=tuple(env), labels=tuple(labels), **values)


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Docker's sizes: `64m`, `1g`, `512k`, `1048576` (bytes)."""
    value = text.strip().lower().removesuffix("b") if len(text.strip()) > 1 else text.strip()
    unit = value[-1:] if value[-1:].isalpha() else ""
    number = value[: len(value) - len(unit)]
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit():
        raise BundleError(f"invalid size {text!r} (e.g. 64m, 1g)")
    return int(float(number) * _UNITS[unit])


# ---- the whole config -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindMount:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class BundleInputs:
    """What the runtime knows when it writes a container's config.json."""

    kind: str  # DOCKER or MESOS
    cmd: str | None
    args: Sequence[str] | None
    image_config: Mapping[str, Any]
    env: Mapping[str, str]  # the task environment (Marathon's variables and the app's env)
    user: ContainerUser
    parameters: Parameters
    sandbox: str  # host path, mounted at SANDBOX_PATH
    rootfs: str  # host path of the merged overlay mount
    cgroups_path: str  # absolute in each hierarchy, e.g. /tessera/agent-1/<task>/ctr
    hostname: str
    netns: str | None = None  # a network namespace to join (bridge); None: the host's
    binds: tuple[BindMount, ...] = ()  # volumes, resolv.conf, hosts
    privileged: bool = False
    nofile: int = 1048576
    # Set when runc runs shielded from the OOM killer, so the container goes back to normal.
    oom_score_adj: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


def container_env(inputs: BundleInputs) -> dict[str, str]:
    """The image's Env, then the task's, then `-e` parameters; MESOS_SANDBOX and HOME last."""
    env: dict[str, str] = {}
    for item in inputs.image_config.get("Env") or []:
        name, _, value = str(item).partition("=")
        env[name] = value
    env.update(inputs.env)
    env.update(dict(inputs.parameters.env))
    env.setdefault("PATH", DEFAULT_PATH)
    env["MESOS_SANDBOX"] = SANDBOX_PATH
    env.setdefault("HOME", inputs.user.home)
    env.setdefault("HOSTNAME", inputs.hostname)
    return env


def working_dir(inputs: BundleInputs) -> str:
    """The app's `workdir`, else the image's; else `/` as Docker does, or the sandbox as
    Mesos' containerizer does for MESOS containers."""
    chosen = inputs.parameters.workdir or inputs.image_config.get("WorkingDir")
    if chosen:
        return str(chosen)
    return "/" if inputs.kind == "DOCKER" else SANDBOX_PATH


def _capabilities(inputs: BundleInputs) -> dict[str, list[str]]:
    bounding = list(ALL_CAPABILITIES if inputs.privileged else DEFAULT_CAPABILITIES)
    # A non-root user gets none effective, as with Docker (they would need setuid binaries or
    # file capabilities to use the bounding set).
    effective = bounding if inputs.user.uid == 0 else []
    return {
        "bounding": bounding,
        "effective": effective,
        "permitted": effective,
        "inheritable": [],
        "ambient": [],
    }


def _mounts(inputs: BundleInputs) -> list[dict[str, Any]]:
    shm = inputs.parameters.shm_bytes
    sys_options = ["nosuid", "noexec", "nodev"] + ([] if inputs.privileged else ["ro"])
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm}"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
        _bind(BindMount(inputs.sandbox, SANDBOX_PATH)),
    ]
    mounts.extend(_bind(bind) for bind in inputs.binds)
    return mounts


def _bind(bind: BindMount) -> dict[str, Any]:
    options = ["rbind", "rprivate"] + (["ro"] if bind.read_only else ["rw"])
    return {
        "destination": bind.container_path,
        "type": "bind",
        "source": bind.host_path,
        "options": options,
    }


def _namespaces(inputs: BundleInputs) -> list[dict[str, str]]:
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if inputs.netns is not None:
        namespaces.append({"type": "network", "path": inputs.netns})
    return namespaces


def build_config(inputs: BundleInputs) -> dict[str, Any]:
    """The OCI runtime spec of the container (runc 1.1 reads it)."""
    user = inputs.user
    env = container_env(inputs)
    linux: dict[str, Any] = {
        "cgroupsPath": inputs.cgroups_path,
        "namespaces": _namespaces(inputs),
        # The task's own cgroup above this one holds the cpu, memory and pids limits.
        "resources": {
            "devices": [{"allow": inputs.privileged, "access": "rwm"}],
        },
    }
    if not inputs.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    annotations = dict(inputs.annotations)
    annotations.update(dict(inputs.parameters.labels))
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
            },
            "args": process_args(inputs.kind, inputs.cmd, inputs.args, inputs.image_config),
            "env": [f"{name}={value}" for name, value in env.items()],
            "cwd": working_dir(inputs),
            "capabilities": _capabilities(inputs),
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": inputs.nofile, "soft": inputs.nofile},
            ],
            "noNewPrivileges": False,
            **({"oomScoreAdj": inputs.oom_score_adj} if inputs.oom_score_adj is not None else {}),
        },
        "root": {"path": inputs.rootfs, "readonly": False},
        "hostname": inputs.hostname,
        "mounts": _mounts(inputs),
        "linux": linux,
        "annotations": annotations,
    }
