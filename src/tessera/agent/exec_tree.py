"""A live task's process tree: the executor's record of it, signalling it, emptying its cgroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import psutil

from tessera.agent.cgroups import TaskCgroup
from tessera.agent.exec_checkpoint import TaskCheckpoint, process_start_ticks
from tessera.agent.exec_types import TaskExit, TaskUsage

log = logging.getLogger(__name__)

LEFTOVER_DEADLINE = 10.0


class TaskRecord:
    """The executor's live record of one task (mutable: it follows the task's life)."""

    __slots__ = (
        "cgroup",
        "checkpoint",
        "done",
        "exit_code",
        "exited",
        "kill_requested",
        "killer",
        "pidfd",
    )

    def __init__(self, checkpoint: TaskCheckpoint, cgroup: TaskCgroup | None) -> None:
        loop = asyncio.get_running_loop()
        self.checkpoint = checkpoint
        self.cgroup = cgroup
        self.pidfd: int | None = None
        self.exited: asyncio.Future[None] = loop.create_future()  # the wrapper ended
        self.done: asyncio.Future[TaskExit] = loop.create_future()  # nothing of it is left
        self.kill_requested = False
        self.killer: asyncio.Task[None] | None = None
        self.exit_code: int | None = None  # the wrapper's, when we reaped it ourselves

    @property
    def task_id(self) -> str:
        return self.checkpoint.task_id

    @property
    def pid(self) -> int:
        return self.checkpoint.pid


def signal_task(task: TaskRecord, sig: signal.Signals) -> None:
    """SIGTERM spares the wrapper (it must record the exit status); SIGKILL spares nothing.

    In its first instants the wrapper may not have joined its cgroup yet, or not have started
    the command: then its process group (the whole task so far) is signalled instead.
    """
    if task.cgroup is not None:
        if sig == signal.SIGKILL:
            task.cgroup.kill()
        elif task.cgroup.signal(sig, spare=task.pid):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(task.pid, sig)  # the wrapper traps SIGTERM once it runs the command


async def kill_leftovers(task: TaskRecord) -> None:
    if task.cgroup is not None:
        await empty_cgroup(task.cgroup, task.task_id)
        return
    delay, deadline = 0.001, time.monotonic() + LEFTOVER_DEADLINE
    while time.monotonic() < deadline:
        try:
            os.killpg(task.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    log.warning("task %s: process group %d survives SIGKILL", task.task_id, task.pid)


async def empty_cgroup(cgroup: TaskCgroup, name: str) -> None:
    """SIGKILL everything in the cgroup until it is empty (bounded by a deadline)."""
    delay, deadline = 0.001, time.monotonic() + LEFTOVER_DEADLINE
    while cgroup.kill():
        if time.monotonic() > deadline:
            log.warning("task %s: processes survive SIGKILL in %s", name, cgroup.paths[0])
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def remove_cgroup(cgroup: TaskCgroup, name: str) -> None:
    """rmdir the cgroup; the kernel may hold it busy for a moment after its last process."""
    delay, deadline = 0.001, time.monotonic() + LEFTOVER_DEADLINE
    while not cgroup.remove():
        if time.monotonic() > deadline:
            log.warning("task %s: cgroup %s stays busy, left in place", name, cgroup.paths[0])
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def destroy_cgroup(cgroup: TaskCgroup, name: str) -> None:
    """Kill and remove a cgroup whose processes may still be joining it (an orphan found at
    recovery whose wrapper had just started): kill again until it can be removed."""
    delay, deadline = 0.001, time.monotonic() + LEFTOVER_DEADLINE
    while True:
        cgroup.kill()
        if cgroup.remove():
            return
        if time.monotonic() > deadline:
            log.warning("task %s: cgroup %s stays busy, left in place", name, cgroup.paths[0])
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def abort_launch(pid: int, cgroup: TaskCgroup | None) -> None:
    """Undo a launch that cannot be checkpointed: kill the fresh task and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if cgroup is not None:
        cgroup.kill()
        cgroup.remove()


def same_process(checkpoint: TaskCheckpoint) -> bool:
    """Is the checkpointed wrapper still running, and not another process with its pid?"""
    ticks = process_start_ticks(checkpoint.pid, running_only=True)
    return ticks is not None and ticks == checkpoint.start_ticks


def reap_if_ours(checkpoint: TaskCheckpoint) -> None:
    """Reap the ended wrapper if this very process launched it (then it is our zombie)."""
    ticks = process_start_ticks(checkpoint.pid)
    if ticks is not None and ticks == checkpoint.start_ticks:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(checkpoint.pid, os.WNOHANG)


def procfs_usage(pid: int) -> TaskUsage:
    """Usage without cgroups: the wrapper and its descendants (escapees are not counted)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return TaskUsage(0.0, 0, None, 0, "procfs")
    cpu, memory, count = 0.0, 0, 0
    for process in processes:
        try:
            times = process.cpu_times()
            cpu += times.user + times.system
            memory += process.memory_info().rss
            count += 1
        except psutil.Error:
            continue
    return TaskUsage(cpu, memory, None, count, "procfs")
