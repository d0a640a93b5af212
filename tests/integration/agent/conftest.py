"""Executors running real processes; with real cgroups when this machine lets us write them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tessera.agent.cgroups import CgroupsUnavailable, parse_mountinfo
from tessera.agent.executor import Executor

TEST_CGROUP_ROOT = "tessera-test"


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A work dir the unprivileged task user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tessera-exec-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cgroup_prefix() -> Iterator[str]:
    """A cgroup prefix unique to this test, removed (with anything left in it) afterwards."""
    prefix = f"{TEST_CGROUP_ROOT}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield prefix
    remove_cgroup_tree(prefix)


def cgroup_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return [mount.mount_point for mount in parse_mountinfo(handle.read())]


def remove_cgroup_tree(prefix: str) -> None:
    """Kill every process under `<mount>/<prefix>` in each hierarchy, then rmdir bottom-up."""
    for mount in cgroup_mounts():
        top = Path(mount) / prefix
        if not top.is_dir():
            continue
        directories = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*directories, top]:
            _empty_and_remove(directory)
        with contextlib.suppress(OSError):  # another test run may still use it
            (Path(mount) / TEST_CGROUP_ROOT).rmdir()


def _empty_and_remove(directory: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pids = (directory / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


async def _shut_down(executor: Executor) -> None:
    await asyncio.gather(
        *(executor.kill(task_id, 0) for task_id in executor.running()), return_exceptions=True
    )
    await executor.close()


@pytest.fixture
def make_executor(work_dir: Path, cgroup_prefix: str) -> Iterator[Callable[..., Executor]]:
    """Build executors on the shared work dir and prefix; the test's cgroups are cleaned up."""
    made: list[Executor] = []

    def make(isolation: str = "cgroups", **options: object) -> Executor:
        try:
            executor = Executor(
                work_dir,
                cgroup_prefix=cgroup_prefix,
                isolation=isolation,
                **options,  # type: ignore[arg-type]
            )
        except CgroupsUnavailable as error:
            pytest.skip(f"no writable cgroup filesystem: {error}")
        made.append(executor)
        return executor

    yield make


@pytest.fixture
async def cg_executor(make_executor: Callable[..., Executor]) -> AsyncIterator[Executor]:
    """An executor with real cgroup isolation (v1 or v2, whichever this machine has)."""
    executor = make_executor("cgroups")
    yield executor
    await _shut_down(executor)


@pytest.fixture
async def pg_executor(make_executor: Callable[..., Executor]) -> AsyncIterator[Executor]:
    """An executor without cgroups: process groups only."""
    executor = make_executor("none")
    yield executor
    await _shut_down(executor)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching the task user needs a root agent")


def process_gone(pid: int) -> bool:
    """Gone or a zombie (dead, only waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
