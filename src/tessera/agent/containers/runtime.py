"""The agent's container runtime: a container task is a task whose command is `runc run`.

For each container task the runtime mounts an overlay root filesystem over the image's
layers (the task's upper dir in its sandbox), attaches a network namespace to the agent's
bridge when the task is bridged, writes the OCI bundle and hands the executor the command
line its task wrapper runs: `runc run` in the foreground, so runc is the container's parent
and the wrapper records its exit status, as for any task. runc puts the container in a
cgroup below the task's own, which keeps the task's limits, usage, OOM evidence and kill.
What each container needs for its cleanup is checkpointed beside the task's checkpoint, so
a restarted agent can clean up after a container that ended while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tessera.agent.cgroups import parse_mountinfo
from tessera.agent.containers.bundle import (
    BindMount,
    BundleError,
    BundleInputs,
    ContainerUser,
    build_config,
    parse_parameters,
    resolve_user,
)
from tessera.agent.containers.network import BridgeNetwork, NetworkError, PortMap
from tessera.agent.containers.rootfs import RootfsError, mount_rootfs, read_inside, unmount_rootfs
from tessera.agent.disk import write_atomic
from tessera.agent.exec_types import LaunchFailed

if TYPE_CHECKING:
    from tessera.agent.images.store import Image, ImageStore

log = logging.getLogger(__name__)

RECORD_NAME = "container.json"
SCRATCH_NAME = ".rootfs"
# runc writes the container's pid here once the container's process runs.
PID_FILE = "pid"
# The wrapper joins this child of the task's cgroup; runc makes CONTAINER_LEAF beside it.
WRAPPER_LEAF = "shim"
CONTAINER_LEAF = "ctr"
_RUNC_ID = re.compile(r"[^\w+.-]")


@dataclass(frozen=True, slots=True)
class ContainerLaunch:
    """What the executor needs to run one task as a container (the image is pulled)."""

    kind: str  # DOCKER or MESOS
    image: Image
    network: str = "host"  # host or bridge
    ports: tuple[PortMap, ...] = ()  # bridged: host port -> container port
    parameters: tuple[tuple[str, str], ...] = ()
    volumes: tuple[tuple[str, str, bool], ...] = ()  # host path, container path, read-only
    privileged: bool = False
    user: str | None = None  # the app's user; else the image's


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """Checkpointed per container: enough to clean it up after an agent restart."""

    task_id: str
    runc_id: str
    container_dir: str
    cgroups_path: str
    bridged: bool
    image_digest: str
    scratch: str = ""  # the overlay's upper and work dirs, in the sandbox
    ip: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ContainerRecord:
        return ContainerRecord(**data)


@dataclass(frozen=True, slots=True)
class PreparedContainer:
    argv: list[str]
    user: ContainerUser
    record: ContainerRecord


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    allow_privileged: bool = False
    # Host paths that `container.volumes` may mount (each entry and what is below it).
    allowed_host_paths: tuple[str, ...] = ()
    hostname: str = field(default_factory=socket.gethostname)


_RUNC_FAILED = re.compile(r'level=error msg="runc run failed: (?P<why>(?:[^"\\]|\\.)*)"')


def runc_start_error(stderr_tail: str) -> str | None:
    """Why runc could not start the container, from what it logged to the task's stderr
    (`… level=error msg="runc run failed: …"`), or None when it started."""
    matches = list(_RUNC_FAILED.finditer(stderr_tail))
    if not matches:
        return None
    return matches[-1].group("why").replace('\\"', '"')


def runc_id(task_id: str) -> str:
    """runc accepts letters, digits and `_+.-` in container IDs; task IDs may also have `:@`."""
    return _RUNC_ID.sub("_", task_id)


class ContainerRuntime:
    """Runs container tasks with runc for one agent (its work dir holds runc's state)."""

    def __init__(
        self,
        work_dir: Path,
        images: ImageStore,
        network: BridgeNetwork | None,
        settings: RuntimeSettings,
    ) -> None:
        self.images = images
        self.network = network
        self.settings = settings
        self._runc = shutil.which("runc")
        # Lowering an OOM score needs CAP_SYS_RESOURCE, which a root inside a container
        # (this project's CI machine) may lack.
        self._choom = shutil.which("choom") if _has_capability(_CAP_SYS_RESOURCE) else None
        self._state = work_dir / "runc"
        self._containers = work_dir / "containers"
        self._version = _runc_version(self._runc) if self._runc else None
        self._unavailable = self._why_unavailable()  # checked once, not at every launch

    def unavailable(self) -> str | None:
        """Why containers cannot run here, or None."""
        return self._unavailable

    def _why_unavailable(self) -> str | None:
        if self._runc is None:
            return "runc is not installed"
        if os.geteuid() != 0:
            return "the agent is not root (runc and overlay mounts need it)"
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay filesystem"
        return None

    def info(self) -> dict[str, Any] | None:
        """What the agent tells the master; None when it cannot run containers."""
        if self.unavailable() is not None:
            return None
        return {
            "runtime": f"runc {self._version or '?'}",
            "bridge": self.network is not None and self.network.unavailable() is None,
            "privileged": self.settings.allow_privileged,
            "oom_shield": self._choom is not None,
        }

    # ---- launch --------------------------------------------------------------------------

    async def prepare(
        self,
        task_id: str,
        launch: ContainerLaunch,
        *,
        cmd: str | None,
        args: Sequence[str] | None,
        env: dict[str, str],
        sandbox: Path,
        cgroup_prefix: str,
    ) -> PreparedContainer:
        """Root filesystem, network, bundle; raises LaunchFailed (and undoes it all)."""
        why = self.unavailable()
        if why is not None:
            raise LaunchFailed(f"cannot run containers on this agent: {why}")
        if launch.privileged and not self.settings.allow_privileged:
            raise LaunchFailed("privileged containers are not allowed on this agent")
        binds = self._volume_binds(launch.volumes)
        container_dir = self._containers / runc_id(task_id)
        record = ContainerRecord(
            task_id=task_id,
            runc_id=runc_id(task_id),
            container_dir=str(container_dir),
            cgroups_path=f"/{cgroup_prefix}/{task_id}/{CONTAINER_LEAF}",
            bridged=launch.network == "bridge",
            image_digest=launch.image.digest,
            scratch=str(sandbox / SCRATCH_NAME),
        )
        try:
            return await self._prepare(record, launch, cmd, args, env, sandbox, binds)
        except (BundleError, RootfsError, NetworkError, OSError) as error:
            await self.cleanup(record)
            raise LaunchFailed(f"cannot set up the container: {error}") from None
        except BaseException:
            await self.cleanup(record)
            raise

    async def _prepare(
        self,
        record: ContainerRecord,
        launch: ContainerLaunch,
        cmd: str | None,
        args: Sequence[str] | None,
        env: dict[str, str],
        sandbox: Path,
        binds: list[BindMount],
    ) -> PreparedContainer:
        container_dir = Path(record.container_dir)
        container_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.images.use(record.task_id, launch.image)
        rootfs = await mount_rootfs(container_dir, launch.image.layers, Path(record.scratch))
        parameters = parse_parameters(launch.parameters)
        config = launch.image.config
        user = resolve_user(
            parameters.user or launch.user or config.get("User"),
            read_inside(rootfs, "etc/passwd"),
            read_inside(rootfs, "etc/group"),
        )
        hostname = parameters.hostname or self.settings.hostname
        netns = None
        if record.bridged:
            if self.network is None:
                raise LaunchFailed("this agent has no bridge network")
            attachment = await self.network.attach(record.task_id, launch.ports)
            record = ContainerRecord(**{**record.to_json(), "ip": attachment.ip})
            netns = attachment.netns
            hostname = parameters.hostname or record.runc_id.rpartition(".")[2][:12] or hostname
        binds.extend(self._etc_binds(container_dir, record.ip, hostname))
        inputs = BundleInputs(
            kind=launch.kind,
            cmd=cmd,
            args=args,
            image_config=config,
            env=env,
            user=user,
            parameters=parameters,
            sandbox=str(sandbox),
            rootfs=str(rootfs),
            cgroups_path=record.cgroups_path,
            hostname=hostname,
            netns=netns,
            binds=tuple(binds),
            privileged=launch.privileged,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            oom_score_adj=0 if self._choom else None,
            annotations={"org.opencontainers.image.ref.name": launch.image.reference},
        )
        write_atomic(container_dir / "config.json", json.dumps(build_config(inputs), indent=1))
        return PreparedContainer(self._argv(record, container_dir), user, record)

    def _argv(self, record: ContainerRecord, bundle: Path) -> list[str]:
        # --keep: the container's cgroup stays until `runc delete`, with its OOM counters.
        runc = [str(self._runc), "--root", str(self._state), "run", "--keep"]
        runc += ["--bundle", str(bundle), "--pid-file", str(bundle / PID_FILE)]
        runc.append(record.runc_id)
        # runc (10 MB) must not be the OOM killer's choice when the container's memory runs
        # out: the container would lose its stdio and its parent.
        return [self._choom, "-n", "-1000", "--", *runc] if self._choom else runc

    def exec_argv(self, record: ContainerRecord) -> tuple[str, ...]:
        """The command line prefix that runs a program inside the container (health checks)."""
        return (str(self._runc), "--root", str(self._state), "exec", record.runc_id)

    def _volume_binds(self, volumes: Sequence[tuple[str, str, bool]]) -> list[BindMount]:
        binds = []
        for host_path, container_path, read_only in volumes:
            real = os.path.realpath(host_path)
            if not any(
                real == allowed or real.startswith(allowed.rstrip("/") + "/")
                for allowed in map(os.path.realpath, self.settings.allowed_host_paths)
            ):
                raise LaunchFailed(
                    f"host path {host_path} is not allowed on this agent "
                    "(see the agent's --allowed-host-paths)"
                )
            if not os.path.exists(real):
                raise LaunchFailed(f"host path {host_path} does not exist on this agent")
            binds.append(BindMount(real, container_path, read_only))
        return binds

    @staticmethod
    def _etc_binds(container_dir: Path, ip: str | None, hostname: str) -> list[BindMount]:
        """/etc/hosts, /etc/hostname and /etc/resolv.conf, as Docker provides them."""
        etc = container_dir / "etc"
        etc.mkdir(exist_ok=True)
        own_address = ip or "127.0.1.1"
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{own_address}\t{hostname}\n"
        (etc / "hosts").write_text(hosts)
        (etc / "hostname").write_text(hostname + "\n")
        try:
            resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            resolv = ""
        (etc / "resolv.conf").write_text(resolv)
        return [
            BindMount(str(etc / name), f"/etc/{name}", read_only=True)
            for name in ("hosts", "hostname", "resolv.conf")
        ]

    # ---- records, cleanup ------------------------------------------------------------------

    @staticmethod
    def save_record(meta_dir: Path, record: ContainerRecord) -> None:
        write_atomic(meta_dir / RECORD_NAME, json.dumps(record.to_json()))

    @staticmethod
    def load_record(meta_dir: Path) -> ContainerRecord | None:
        try:
            return ContainerRecord.from_json(json.loads((meta_dir / RECORD_NAME).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    async def cleanup(self, record: ContainerRecord) -> None:
        """Remove whatever is left of an ended container; idempotent, never raises."""
        if self._runc is not None:
            await _quiet(
                [self._runc, "--root", str(self._state), "delete", "--force", record.runc_id]
            )
        try:
            await unmount_rootfs(Path(record.container_dir))
        except RootfsError as error:
            log.error("task %s: %s", record.task_id, error)
        else:
            # What the container wrote outside its sandbox goes with it, as with Docker's
            # `--rm`; the sandbox itself (logs, files) stays.
            if record.scratch:
                shutil.rmtree(record.scratch, ignore_errors=True)
        if record.bridged and self.network is not None:
            try:
                await self.network.detach(record.task_id)
            except NetworkError as error:
                log.error("task %s: %s", record.task_id, error)
        _remove_stray_cgroups(record.cgroups_path)
        self.images.release(record.task_id)

    def close(self, cgroup_prefix: str) -> None:
        """Remove our prefix from the hierarchies only runc wrote to (when empty)."""
        for mount in _cgroup_mounts():
            parts = cgroup_prefix.strip("/").split("/")
            while parts:
                try:
                    os.rmdir(os.path.join(mount, *parts))
                except OSError:
                    break
                parts.pop()


_CAP_SYS_RESOURCE = 24


def _has_capability(number: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> number & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _runc_version(runc: str) -> str | None:
    try:
        output = subprocess.run(
            [runc, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = output.splitlines()[0] if output else ""
    return first.split()[-1] if first else None


async def _quiet(argv: Sequence[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await process.wait()


def _cgroup_mounts() -> list[str]:
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    return [mount.mount_point for mount in parse_mountinfo(text)]


def _remove_stray_cgroups(cgroups_path: str) -> None:
    """runc makes the container's cgroup in every hierarchy (devices, freezer, … too) and
    removes only the leaf: the task level in the hierarchies the agent does not manage is
    left. The agent's own task cgroups are removed by the executor afterwards."""
    task_level = cgroups_path.rstrip("/").rpartition("/")[0]
    for mount in _cgroup_mounts():
        for relative in (cgroups_path, task_level):
            with contextlib.suppress(OSError):
                os.rmdir(mount + relative)
