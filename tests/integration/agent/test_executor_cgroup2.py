"""The v2 task cgroup and the wrapper on a real cgroup2 hierarchy, even one without controllers.

Where cgroup v1 holds the controllers (as on hybrid hosts), the unified hierarchy still
has cgroup.procs, cgroup.kill and cpu.stat: enough to check that the wrapper joins its
cgroup before the command runs and that signalling, cgroup.kill and removal work.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import eventually, process_gone
from tessera.agent.cgroup_v2 import CgroupV2
from tessera.agent.cgroups import parse_mountinfo
from tessera.agent.exec_spawn import WRAPPER_SCRIPT, spawn_wrapper


@pytest.fixture
def cgroup2_dir(cgroup_prefix: str) -> Iterator[Path]:
    with open("/proc/self/mountinfo") as handle:
        mounts = [m for m in parse_mountinfo(handle.read()) if m.fstype == "cgroup2"]
    if not mounts:
        pytest.skip("no writable cgroup filesystem: no cgroup2 hierarchy is mounted")
    path = Path(mounts[0].mount_point) / cgroup_prefix / "task.1"
    try:
        path.mkdir(parents=True)
    except OSError as error:
        pytest.skip(f"no writable cgroup filesystem: {mounts[0].mount_point}: {error}")
    yield path  # the cgroup_prefix fixture removes it, and anything left in it


async def test_wrapper_joins_and_cgroup_kill_ends_everything(
    cgroup2_dir: Path, work_dir: Path
) -> None:
    cgroup = CgroupV2(str(cgroup2_dir), can_kill=(cgroup2_dir / "cgroup.kill").exists())
    wrapper = work_dir / "wrapper.sh"
    wrapper.write_text(WRAPPER_SCRIPT)
    status = work_dir / "status"
    out = os.open(work_dir / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    pid = spawn_wrapper(
        str(wrapper),
        status_file=str(status),
        sandbox=str(work_dir),
        procs_files=cgroup.procs_files,
        argv=["/bin/sh", "-c", "trap '' TERM; setsid sleep 300 & sleep 300; cat /proc/self/cgroup"],
        env={"PATH": "/usr/bin:/bin"},
        stdout_fd=out,
        stderr_fd=out,
    )
    os.close(out)
    await eventually(lambda: len(cgroup.pids()) >= 4)  # wrapper, sh, two sleeps
    members = cgroup.pids()
    assert pid in members
    assert cgroup.usage().cpu_seconds >= 0
    assert cgroup.signal(signal.SIGTERM, spare=pid) >= 2  # ignored by all of them
    await asyncio.sleep(0.05)
    assert cgroup.pids() == members
    assert cgroup.kill() == len(members)
    await eventually(lambda: cgroup.pids() == [])
    os.waitpid(pid, 0)
    assert all(process_gone(member) for member in members)
    await eventually(cgroup.remove)
    assert not cgroup2_dir.exists()
