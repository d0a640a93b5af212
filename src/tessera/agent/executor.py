"""The agent's task executor: runs each task as an isolated process tree, watches, kills, recovers.

A task is `/bin/sh tessera-task.sh` (see `exec_spawn`) in its own session and cgroup(s), in
`<work_dir>/sandboxes/<task_id>/` (0700, the task user's) with `stdout` and `stderr` there, as
an unprivileged user: its spec's `user`, else the agent's `--task-user`, else its role's own
uid (see `task_users`). The rest of the work dir is root's alone.
The agent watches each wrapper with a pidfd on the event loop (no thread, no polling), which
works for processes that are not its children too: after an agent restart, `recover()`
re-adopts the live tasks and reads how the others ended from their checkpoint directory.
Tasks never die with the agent; `close()` only stops watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tessera.agent.cgroup_files import CgroupLimits
from tessera.agent.cgroups import CgroupsUnavailable, TaskCgroup, clean_prefix, select_driver
from tessera.agent.containers.runtime import (
    PID_FILE,
    SCRATCH_NAME,
    WRAPPER_LEAF,
    ContainerRecord,
    ContainerRuntime,
    PreparedContainer,
    runc_start_error,
)
from tessera.agent.disk import describe_os_error, write_atomic
from tessera.agent.exec_checkpoint import MetaStore, TaskCheckpoint, boot_id, process_start_ticks
from tessera.agent.exec_outcome import (
    Evidence,
    WrapperStatus,
    decide_exit,
    last_line,
    parse_status,
)
from tessera.agent.exec_spawn import (
    ROOT_WRAPPER_ENV,
    WRAPPER_NAME,
    WRAPPER_SCRIPT,
    RunAs,
    SwitchTools,
    command_line,
    current_user,
    env_script,
    lookup_user,
    mount_namespaces,
    spawn_wrapper,
    task_environment,
)
from tessera.agent.exec_tree import (
    TaskRecord,
    abort_launch,
    destroy_cgroup,
    empty_cgroup,
    kill_leftovers,
    procfs_usage,
    reap_if_ours,
    remove_cgroup,
    same_process,
    signal_task,
)
from tessera.agent.exec_types import (
    REASON_AGENT_RESTARTED,
    LaunchFailed,
    LaunchSpec,
    RecoveredTask,
    RunningTask,
    TaskExit,
    TaskUsage,
    UnknownTask,
    check_task_id,
)
from tessera.agent.task_users import STATE_FILE, TaskUsers, UidRange

__all__ = [
    "CgroupsUnavailable",
    "Executor",
    "LaunchFailed",
    "LaunchSpec",
    "RecoveredTask",
    "RunningTask",
    "TaskExit",
    "TaskUsage",
    "UnknownTask",
]

log = logging.getLogger(__name__)

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
LEFTOVER_DEADLINE = 10.0
_ISOLATIONS = ("auto", "cgroups", "none")


class Executor:
    """Launches and supervises the tasks of one agent.

    `default_user`: who tasks run as when their spec names nobody; None gives each role its
    own uid from `task_uids` (kept in `meta/task-users.json`).
    A root agent switches users with `setpriv`; an agent that is not root cannot, so every
    task runs as the agent's own user and `isolation_info()` says so. `isolation`: "auto"
    uses cgroups when a writable hierarchy exists and warns otherwise, "cgroups" refuses to
    start without them (CgroupsUnavailable), "none" uses process groups only.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        cgroup_prefix: str = "tessera",
        default_user: str | None = None,
        isolation: str = "auto",
        containers: ContainerRuntime | None = None,
        task_uids: UidRange | None = None,
    ) -> None:
        if isolation not in _ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(_ISOLATIONS)}")
        work_dir = Path(work_dir).absolute()  # the wrapper changes directory before using paths
        self._sandboxes = work_dir / "sandboxes"
        self._sandboxes.mkdir(parents=True, exist_ok=True)
        self._meta = MetaStore(work_dir / "meta" / "tasks")
        self._wrapper = self._install_wrapper(work_dir / "meta" / WRAPPER_NAME)
        self._cgroup_prefix = clean_prefix(cgroup_prefix)
        self.containers = containers
        detection = select_driver(isolation, self._cgroup_prefix)
        self._driver = detection.driver
        self._cgroup_note = detection.reason
        self._me = current_user()
        self._can_switch = self._me.uid == 0
        self._switch_tools = _switch_tools() if self._can_switch else None
        self._default_user = default_user if self._can_switch else None
        self._requested_user = default_user
        self._task_users: TaskUsers | None = None
        if self._can_switch and default_user is None:
            self._task_users = TaskUsers(work_dir / "meta" / STATE_FILE, task_uids)
        self._reach_note = self._close_work_dir(work_dir) if self._can_switch else None
        self._users: dict[str, RunAs] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._exits: dict[str, TaskExit] = {}
        self._finishers: set[asyncio.Task[None]] = set()

    def _close_work_dir(self, work_dir: Path) -> str | None:
        """Keep the work dir (images, journal, checkpoints) root's alone; tasks still reach
        their sandboxes through a mount namespace. Returns a warning when they cannot."""
        (work_dir / "meta").chmod(0o700)
        self._sandboxes.chmod(0o711)  # no listing of the other tasks' sandboxes
        if mount_namespaces() is None:
            if _traversable(self._sandboxes):
                return None
            return (
                f"{self._sandboxes} is not reachable by other users (a parent lacks o+x) and "
                "this host cannot make mount namespaces: tasks can only use their sandbox "
                "as their working directory"
            )
        status = work_dir.stat()
        # Never a shared directory (sticky or world-writable, e.g. /tmp) or someone else's.
        if status.st_uid == 0 and not status.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
            work_dir.chmod(0o700)
        return None

    @staticmethod
    def _install_wrapper(path: Path) -> str:
        if not path.exists() or path.read_text() != WRAPPER_SCRIPT:
            write_atomic(path, WRAPPER_SCRIPT, 0o644)
        return str(path)

    # ---- what the agent reports ----------------------------------------------------------

    def isolation_info(self) -> dict[str, object]:
        """How tasks are isolated here; `warning` is set when isolation is weaker than asked."""
        warnings = []
        if self._driver is None:
            warnings.append(
                f"NO CGROUP ISOLATION ({self._cgroup_note}): tasks run in process groups only, "
                "without cpu, memory or pids limits, and a task that leaves its session "
                "escapes kill"
            )
        if not self._can_switch:
            wanted = self._requested_user
            ignored = f", not {wanted!r}" if wanted and wanted != self._me.name else ""
            warnings.append(f"the agent is not root: every task runs as {self._me.name!r}{ignored}")
        elif self._switch_tools is None:
            warnings.append("setpriv (util-linux) or env not found: tasks cannot switch user")
        elif self._reach_note:
            warnings.append(self._reach_note)
        info: dict[str, object] = {
            "cgroups": self._driver.version if self._driver else None,
            "cgroup_detail": self._driver.describe() if self._driver else None,
            "user_switching": self._switch_tools is not None,
            "default_user": self.user_for(None),
            "warning": "; ".join(warnings) or None,
        }
        if self._task_users is not None:
            info["role_uids"] = dict(self._task_users.roles())
        return info

    def user_for(self, user: str | None, role: str = "*") -> str:
        """Who a task of `role` whose spec names `user` runs as here (a name or a uid)."""
        if not self._can_switch:
            return self._me.name
        if user or self._default_user:
            return str(user or self._default_user)
        assert self._task_users is not None
        return str(self._task_users.uid_of(role))

    def containers_info(self) -> dict[str, Any] | None:
        """What the master may place here in containers; None when they cannot run (no
        runtime, not root, or no cgroups: a container's limits live in its task's cgroup)."""
        if self.containers is None or self._driver is None:
            return None
        return self.containers.info()

    def running(self) -> list[str]:
        return list(self._tasks)

    def sandbox(self, task_id: str) -> Path:
        return self._sandboxes / check_task_id(task_id)

    def usage(self, task_id: str) -> TaskUsage:
        task = self._live(task_id)
        if task.cgroup is not None:
            used = task.cgroup.usage()
            return TaskUsage(
                used.cpu_seconds, used.mem_bytes, used.mem_limit_bytes, used.pids, "cgroup"
            )
        return procfs_usage(task.pid)

    # ---- launch ----------------------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> RunningTask:
        """Start the task; returns once its process tree exists (a launch is idempotent by ID).

        Raises LaunchFailed when nothing could start: unknown user, missing executable (args
        form), sandbox, cgroup or checkpoint failure, or the ID was used before. A command
        run through the shell (`command`) that is not found starts a shell, which exits 127:
        that ends TASK_FAILED with the shell's error through `wait()`.
        """
        known = self._tasks.get(spec.task_id)
        if known is not None:
            return self._describe(known)
        try:
            task = await self._start_container(spec) if spec.container else self._start(spec)
        except LaunchFailed as failure:
            log.warning("task %s cannot start: %s", spec.task_id, failure.message)
            self._exits.setdefault(spec.task_id, failure.exit)
            raise
        self._tasks[spec.task_id] = task
        self._watch(task)
        if spec.container is None:
            return self._describe(task)
        started = await self._container_started(task)
        return replace(self._describe(task), started=started)

    async def _container_started(self, task: TaskRecord) -> bool:
        """Wait until runc has started the container (it writes the pid file then) or the
        task ended first (runc could not start it); True in the first case."""
        record = self._container_record(task.task_id)
        if record is None:
            return True
        pid_file = Path(record.container_dir) / PID_FILE
        delay = 0.001
        while not pid_file.exists():
            if task.exited.done():
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.005)  # runc takes ~15-30 ms: report it without lag
        return True

    def _start(self, spec: LaunchSpec) -> TaskRecord:
        run_as = self._run_as(spec.user, spec.role)
        switch = self._switch_tools if run_as.uid != self._me.uid else None
        env = task_environment(spec, run_as, str(self.sandbox(spec.task_id)))
        if switch is None:  # the task's environment is the wrapper's own
            argv, env_data = command_line(spec, run_as, env, None), None
        else:  # never in an argv (cmdline is public), never in a root process's environment
            argv = command_line(spec, run_as, env, switch, env_on_fd=True)
            env, env_data = ROOT_WRAPPER_ENV, env_script(env)
        self._create_checkpoint(spec.task_id)
        try:
            return self._spawn(spec, run_as, argv, env, env_data=env_data)
        except BaseException:
            self._meta.forget(spec.task_id)
            raise

    def _spawn(
        self,
        spec: LaunchSpec,
        run_as: RunAs,
        argv: list[str],
        env: Mapping[str, str],
        leaf: str | None = None,
        env_data: bytes | None = None,
    ) -> TaskRecord:
        sandbox = self.sandbox(spec.task_id)
        # A container's sandbox contents were handed to its user already (_start_container).
        stdout_fd, stderr_fd = self._make_sandbox(sandbox, run_as, spec.container is None)
        cgroup = None
        try:
            cgroup = self._make_cgroup(spec, leaf)
            pid = spawn_wrapper(
                self._wrapper,
                status_file=str(self._meta.status_path(spec.task_id)),
                sandbox=str(sandbox),
                procs_files=cgroup.procs_files if cgroup else (),
                argv=argv,
                env=env,
                stdout_fd=stdout_fd,
                stderr_fd=stderr_fd,
                env_data=env_data,
            )
        except OSError as error:
            if cgroup is not None:
                cgroup.remove()
            raise LaunchFailed(f"cannot start the task: {error}") from None
        finally:
            os.close(stdout_fd)
            os.close(stderr_fd)
        checkpoint = TaskCheckpoint(
            task_id=spec.task_id,
            pid=pid,
            start_ticks=process_start_ticks(pid),
            boot_id=boot_id(),
            sandbox=str(sandbox),
            cgroups=cgroup.paths if cgroup else (),
            user=run_as.name,
            mem_mib=spec.mem,
            kill_grace_seconds=spec.kill_grace_seconds,
            started_at=time.time(),
        )
        try:
            self._meta.write_checkpoint(checkpoint)
        except OSError as error:
            abort_launch(pid, cgroup)
            message = f"cannot checkpoint the task: {describe_os_error(error, self._meta.root)}"
            raise LaunchFailed(message) from None
        return TaskRecord(checkpoint, cgroup)

    async def _start_container(self, spec: LaunchSpec) -> TaskRecord:
        """Like `_start`, with `runc run` as the command (see containers/runtime.py)."""
        runtime = self.containers
        if runtime is None or self._driver is None:
            why = "no cgroups" if runtime else "no container runtime configured"
            raise LaunchFailed(f"cannot run containers on this agent: {why}")
        self._create_checkpoint(spec.task_id)
        sandbox = self.sandbox(spec.task_id)
        prepared: PreparedContainer | None = None
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(sandbox, 0o700)
            assert spec.container is not None
            prepared = await runtime.prepare(
                spec.task_id,
                spec.container,
                cmd=spec.command,
                args=spec.args,
                env=dict(spec.env),
                sandbox=sandbox,
                cgroup_prefix=self._cgroup_prefix,
            )
            runtime.save_record(self._meta.task_dir(spec.task_id), prepared.record)
            user = prepared.user
            _hand_over(sandbox, user.uid, user.gid)
            run_as = RunAs(user.name or str(user.uid), user.uid, user.gid, (), user.home)
            return self._spawn(spec, run_as, prepared.argv, ROOT_WRAPPER_ENV, WRAPPER_LEAF)
        except BaseException as error:
            if prepared is not None:
                await runtime.cleanup(prepared.record)
            self._meta.forget(spec.task_id)
            if isinstance(error, OSError):
                reason = describe_os_error(error)
                raise LaunchFailed(f"cannot set up the container: {reason}") from None
            raise

    def _create_checkpoint(self, task_id: str) -> None:
        try:
            self._meta.create(task_id)
        except FileExistsError:
            raise LaunchFailed(f"task {task_id} was already launched on this agent") from None
        except OSError as error:
            message = f"cannot checkpoint the task: {describe_os_error(error, self._meta.root)}"
            raise LaunchFailed(message) from None

    def _run_as(self, user: str | None, role: str) -> RunAs:
        if not self._can_switch:
            return self._me
        name = user or self._default_user
        if name is None:
            assert self._task_users is not None
            try:
                return self._task_users.run_as(role)
            except (OSError, ValueError) as error:  # ValueError: NoFreeUid's base
                raise LaunchFailed(f"no task user for role {role!r}: {error}") from None
        run_as = self._users.get(name)
        if run_as is None:
            run_as = self._users[name] = lookup_user(name)
        if run_as.uid != self._me.uid and self._switch_tools is None:
            raise LaunchFailed(f"cannot run as {name!r}: setpriv (util-linux) is not installed")
        return run_as

    def _make_sandbox(self, sandbox: Path, run_as: RunAs, contents: bool) -> tuple[int, int]:
        """The sandbox, 0700 and the task user's; with `contents`, so is what the agent put
        there before (fetched files, secret files), whoever it was written as."""
        chown = run_as.uid != self._me.uid
        try:
            try:
                os.mkdir(sandbox, 0o700)
                filled = False
            except FileExistsError:
                filled = contents
            if chown:
                os.chown(sandbox, run_as.uid, run_as.gid)
                if filled:
                    _hand_over(sandbox, run_as.uid, run_as.gid)
            os.chmod(sandbox, 0o700)
            stdout_fd = os.open(sandbox / "stdout", _LOG_FLAGS, 0o640)
        except OSError as error:
            message = f"cannot create the sandbox: {describe_os_error(error, sandbox)}"
            raise LaunchFailed(message) from None
        try:
            stderr_fd = os.open(sandbox / "stderr", _LOG_FLAGS, 0o640)
            if chown:
                os.fchown(stdout_fd, run_as.uid, run_as.gid)
                os.fchown(stderr_fd, run_as.uid, run_as.gid)
        except OSError as error:
            os.close(stdout_fd)
            message = f"cannot create the sandbox: {describe_os_error(error, sandbox)}"
            raise LaunchFailed(message) from None
        return stdout_fd, stderr_fd

    def _make_cgroup(self, spec: LaunchSpec, leaf: str | None = None) -> TaskCgroup | None:
        if self._driver is None:
            return None
        limits = CgroupLimits(spec.cpus, spec.mem, spec.cpu_hard_limit, spec.pids_limit)
        try:
            return self._driver.create(spec.task_id, limits, leaf)
        except OSError as error:
            raise LaunchFailed(f"cannot create the task's cgroup: {error}") from None

    def _describe(self, task: TaskRecord) -> RunningTask:
        checkpoint = task.checkpoint
        record = self._container_record(task.task_id)
        return RunningTask(
            task_id=checkpoint.task_id,
            pid=checkpoint.pid,
            sandbox=Path(checkpoint.sandbox),
            cgroups=checkpoint.cgroups,
            started_at=checkpoint.started_at,
            user=checkpoint.user,
            ip=record.ip if record else None,
            exec_prefix=self.containers.exec_argv(record) if self.containers and record else (),
        )

    def _container_record(self, task_id: str) -> ContainerRecord | None:
        if self.containers is None:
            return None
        return self.containers.load_record(self._meta.task_dir(task_id))

    # ---- watching and the end of a task ----------------------------------------------------

    def _watch(self, task: TaskRecord) -> None:
        """Watch the wrapper's pidfd; raises ProcessLookupError when it is already gone."""
        task.pidfd = os.pidfd_open(task.pid)
        asyncio.get_running_loop().add_reader(task.pidfd, self._on_wrapper_exit, task)

    def _unwatch(self, task: TaskRecord) -> None:
        if task.pidfd is not None:
            asyncio.get_running_loop().remove_reader(task.pidfd)
            os.close(task.pidfd)
            task.pidfd = None

    def _on_wrapper_exit(self, task: TaskRecord) -> None:
        self._unwatch(task)
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            pid, wait_status = os.waitpid(task.pid, os.WNOHANG)
            if pid == task.pid and os.WIFEXITED(wait_status):
                task.exit_code = os.WEXITSTATUS(wait_status)
        if not task.exited.done():
            task.exited.set_result(None)
        finisher = asyncio.get_running_loop().create_task(self._finish(task))
        self._finishers.add(finisher)
        finisher.add_done_callback(self._finished)

    def _finished(self, finisher: asyncio.Task[None]) -> None:
        self._finishers.discard(finisher)
        if not finisher.cancelled() and finisher.exception() is not None:
            log.error("finishing a task failed", exc_info=finisher.exception())

    async def _finish(self, task: TaskRecord) -> None:
        """Kill what is left of the task, decide how it ended, checkpoint that, free its cgroup."""
        evidence = self._evidence(task.checkpoint, task.cgroup, task.kill_requested)
        if evidence.status is None and task.exit_code is not None:
            # No status file (disk full?): the wrapper exits with the command's status too.
            evidence = replace(evidence, status=WrapperStatus(exit_status=task.exit_code))
        await kill_leftovers(task)
        await self._remove_container(task.task_id)
        result = decide_exit(evidence)
        try:
            self._meta.write_exit(task.task_id, result)
        except OSError as error:
            reason = describe_os_error(error)
            log.error("task %s: cannot checkpoint its exit: %s", task.task_id, reason)
        if task.cgroup is not None:
            await remove_cgroup(task.cgroup, task.task_id)
        self._tasks.pop(task.task_id, None)
        self._exits[task.task_id] = result
        if not task.done.done():
            task.done.set_result(result)

    async def _remove_container(self, task_id: str) -> None:
        record = self._container_record(task_id)
        if record is not None and self.containers is not None:
            await self.containers.cleanup(record)

    def _evidence(
        self, checkpoint: TaskCheckpoint, cgroup: TaskCgroup | None, kill_requested: bool
    ) -> Evidence:
        text = self._meta.read_status(checkpoint.task_id)
        status = parse_status(text) if text else None
        evidence = Evidence(
            status=status,
            kill_requested=kill_requested or self._meta.kill_requested(checkpoint.task_id),
            oom_kills=cgroup.oom_kills() if cgroup else 0,
            limit_hits=cgroup.limit_hits() if cgroup else 0,
            mem_mib=checkpoint.mem_mib,
            wrapper_pid=checkpoint.pid,
        )
        if status is None or status.setup_failed or status.exit_status in (126, 127):
            tail = last_line(_tail(Path(checkpoint.sandbox) / "stderr"))
            evidence = replace(evidence, stderr_tail=tail)
        elif status.exit_status == 1 and self._container_record(checkpoint.task_id):
            # runc exits 1 when it cannot start the container, and says why on stderr.
            why = runc_start_error(_tail(Path(checkpoint.sandbox) / "stderr"))
            if why is not None:
                failed = WrapperStatus(setup_failed=f"the container did not start: {why}")
                evidence = replace(evidence, status=failed)
        return evidence

    async def wait(self, task_id: str) -> TaskExit:
        """How the task ended, once nothing of it runs any more (its cgroup is gone)."""
        result = self._exits.get(task_id)
        if result is not None:
            return result
        return await asyncio.shield(self._live(task_id).done)

    # ---- kill --------------------------------------------------------------------------------

    async def kill(self, task_id: str, grace: float | None = None) -> None:
        """SIGTERM every process of the task, wait `grace` (default: the spec's) for it to
        end, then SIGKILL until nothing is left. `wait()` then yields TASK_KILLED."""
        task = self._tasks.get(task_id)
        if task is None:
            if task_id in self._exits:
                return
            raise UnknownTask(task_id)
        if task.killer is None:
            task.killer = asyncio.get_running_loop().create_task(self._kill(task, grace))
        await asyncio.shield(task.killer)

    async def _kill(self, task: TaskRecord, grace: float | None) -> None:
        task.kill_requested = True
        try:
            self._meta.mark_kill(task.task_id)
        except OSError as error:
            log.error("task %s: cannot checkpoint the kill: %s", task.task_id, error)
        if grace is None:
            grace = task.checkpoint.kill_grace_seconds
        if not task.exited.done():
            signal_task(task, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(task.exited), max(grace, 0.0))
            except TimeoutError:
                signal_task(task, signal.SIGKILL)
        await asyncio.shield(task.done)

    def _live(self, task_id: str) -> TaskRecord:
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        return task

    # ---- agent restart -----------------------------------------------------------------------

    def checkpointed(self) -> list[RecoveredTask]:
        """Every task in the checkpoint, and whether it still runs (a read, changes nothing).

        A task whose wrapper is gone carries its real exit: the exit status its wrapper
        recorded, the OOM counters of its cgroup, or TASK_LOST when the host rebooted.
        """
        found = []
        for task_id in self._meta.task_ids():
            checkpoint = self._meta.read_checkpoint(task_id)
            if checkpoint is not None:
                found.append(self._inspect(checkpoint))
        return found

    def _inspect(self, checkpoint: TaskCheckpoint) -> RecoveredTask:
        task_id = checkpoint.task_id
        result = self._exits.get(task_id) or self._meta.read_exit(task_id)
        alive = result is None and task_id in self._tasks
        if result is None and not alive:
            if checkpoint.boot_id != boot_id():
                result = _lost(checkpoint)
            elif same_process(checkpoint):
                alive = True
            else:
                result = decide_exit(self._evidence(checkpoint, self._attach(checkpoint), False))
        return RecoveredTask(task_id, checkpoint.pid, Path(checkpoint.sandbox), alive, result)

    async def recover(self) -> list[RecoveredTask]:
        """Re-adopt live tasks (same pids) and settle the ones that ended while we were down.

        Afterwards `running()`, `wait()`, `kill()` and `usage()` work for every task returned;
        `wait()` on a task that ended meanwhile returns its real exit at once. Also kills
        orphans: processes in cgroups under our prefix that no checkpoint accounts for.
        """
        recovered = self.checkpointed()
        for found in recovered:
            if found.task_id in self._tasks or found.task_id in self._exits:
                continue
            checkpoint = self._meta.read_checkpoint(found.task_id)
            if checkpoint is None:  # forgotten meanwhile
                continue
            task = TaskRecord(checkpoint, self._attach(checkpoint))
            if found.alive and self._adopt(task):
                continue
            settled = self._meta.read_exit(found.task_id)
            if settled is None and found.exit is not None and found.exit.state == "TASK_LOST":
                settled = found.exit
                try:
                    self._meta.write_exit(found.task_id, settled)
                except OSError as error:  # it is decided again the same way next time
                    log.error("task %s: cannot checkpoint its exit: %s", found.task_id, error)
            if settled is None:
                reap_if_ours(checkpoint)
                task.exited.set_result(None)
                await self._finish(task)
                continue
            if task.cgroup is not None:  # a cleanup cut short by the agent's death
                await empty_cgroup(task.cgroup, found.task_id)
            await self._remove_container(found.task_id)
            if task.cgroup is not None:
                await remove_cgroup(task.cgroup, found.task_id)
            self._exits[found.task_id] = settled
        await self._kill_orphans()
        return [self._inspect_known(found) for found in recovered]

    def _inspect_known(self, found: RecoveredTask) -> RecoveredTask:
        result = self._exits.get(found.task_id)
        if found.alive and result is None:
            return found
        return RecoveredTask(found.task_id, found.pid, found.sandbox, False, result)

    def _adopt(self, task: TaskRecord) -> bool:
        try:
            self._watch(task)
        except ProcessLookupError:
            return False
        # The pidfd pins the pid: checking the start time now is free of races.
        if not same_process(task.checkpoint):
            self._unwatch(task)
            return False
        self._tasks[task.task_id] = task
        return True

    def _attach(self, checkpoint: TaskCheckpoint) -> TaskCgroup | None:
        if self._driver is None or not checkpoint.cgroups:
            return None
        return self._driver.attach(checkpoint.task_id)

    async def _kill_orphans(self) -> None:
        if self._driver is None:
            return
        for name in self._driver.names():
            if name in self._tasks:
                continue
            cgroup = self._driver.attach(name)
            if cgroup is None:
                continue
            if cgroup.pids():
                log.warning("killing orphan processes in cgroup %s", cgroup.paths[0])
            await destroy_cgroup(cgroup, name)

    def forget(self, task_id: str) -> None:
        """Drop an ended task's checkpoint (after its terminal update was acknowledged)."""
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} is still running")
        self._exits.pop(task_id, None)
        self._meta.forget(check_task_id(task_id))

    async def close(self) -> None:
        """Stop watching. Tasks keep running; a new Executor's `recover()` adopts them."""
        for task in list(self._tasks.values()):
            self._unwatch(task)
            if task.killer is not None:
                task.killer.cancel()
            task.done.cancel()
        for finisher in list(self._finishers):
            finisher.cancel()  # safe: the exit is checkpointed before the cgroup goes
        self._tasks.clear()
        if self._driver is not None:
            self._driver.release()
        if self.containers is not None:
            self.containers.close(self._cgroup_prefix)


# ---- helpers without executor state ---------------------------------------------------------


def _hand_over(sandbox: Path, uid: int, gid: int) -> None:
    """Give what the agent put into a sandbox (fetched files, secret files) to the task's
    user: the fetch may have run as someone else, e.g. before the image said who a
    container runs as. A container overlay's scratch dir stays the agent's."""
    if uid == 0 and gid == 0:
        return
    for entry in os.scandir(sandbox):
        if entry.name == SCRATCH_NAME:
            continue
        os.lchown(entry.path, uid, gid)
        if entry.is_dir(follow_symlinks=False):
            for directory, names, files in os.walk(entry.path):
                for name in names + files:
                    os.lchown(os.path.join(directory, name), uid, gid)


def _switch_tools() -> SwitchTools | None:
    setpriv, env = shutil.which("setpriv"), shutil.which("env")
    return SwitchTools(setpriv, env) if setpriv and env else None


def _traversable(path: Path) -> bool:
    """Can any user walk down to `path` (every directory on the way has o+x)?"""
    return all(os.stat(directory).st_mode & 0o001 for directory in [path, *path.parents])


def _lost(checkpoint: TaskCheckpoint) -> TaskExit:
    message = f"the host rebooted since the task started (pid {checkpoint.pid}); it is gone"
    return TaskExit("TASK_LOST", REASON_AGENT_RESTARTED, message)


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
