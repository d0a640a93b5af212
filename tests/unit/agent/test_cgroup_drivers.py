"""The v2 and v1 drivers write the right files, tested against fake cgroup trees in tmp_path.

A plain directory stands in for cgroupfs: mkdir makes an empty "cgroup", writes create the
control files, and the tests pre-create the files the kernel would provide.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tessera.agent.cgroup_files import CgroupLimits
from tessera.agent.cgroup_v1 import CgroupV1Driver
from tessera.agent.cgroup_v2 import CgroupV2Driver

LIMITS = CgroupLimits(cpus=0.5, mem_mib=64, cpu_hard_limit=True, pids_limit=100)


def fake_v2(root: Path, *, subtree: str = "") -> Path:
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text(subtree)
    return root


def test_v2_prepare_enables_controllers_down_to_the_prefix(tmp_path: Path) -> None:
    driver = CgroupV2Driver(str(fake_v2(tmp_path)), "tessera/agent-1")
    driver.prepare()
    for level in (tmp_path, tmp_path / "tessera", tmp_path / "tessera/agent-1"):
        assert (level / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_v2_prepare_leaves_enabled_controllers_alone(tmp_path: Path) -> None:
    fake_v2(tmp_path, subtree="cpu memory pids io\n")
    CgroupV2Driver(str(tmp_path), "t").prepare()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory pids io\n"


def test_v2_create_writes_limits(tmp_path: Path) -> None:
    driver = CgroupV2Driver(str(fake_v2(tmp_path)), "tessera")
    driver.prepare()
    (tmp_path / "tessera/memory.swap.max").write_text("max\n")  # swap accounting exists
    driver.prepare()
    cgroup = driver.create("web.1", LIMITS)
    task = tmp_path / "tessera/web.1"
    assert cgroup.paths == (str(task),)
    assert cgroup.procs_files == (f"{task}/cgroup.procs",)
    assert (task / "cpu.weight").read_text() == "20"  # 512 shares
    assert (task / "cpu.max").read_text() == "50000 100000"
    assert (task / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (task / "memory.swap.max").read_text() == "0"
    assert (task / "pids.max").read_text() == "100"


def test_v2_without_hard_limit_or_swap_writes_neither(tmp_path: Path) -> None:
    driver = CgroupV2Driver(str(fake_v2(tmp_path)), "tessera")
    driver.prepare()
    driver.create("a", CgroupLimits(cpus=1, mem_mib=10))
    assert not (tmp_path / "tessera/a/cpu.max").exists()
    assert not (tmp_path / "tessera/a/memory.swap.max").exists()
    assert (tmp_path / "tessera/a/pids.max").read_text() == "max"


def test_v2_reads_usage_and_oom_kills(tmp_path: Path) -> None:
    driver = CgroupV2Driver(str(fake_v2(tmp_path)), "tessera")
    driver.prepare()
    cgroup = driver.create("a", LIMITS)
    task = tmp_path / "tessera/a"
    (task / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (task / "memory.current").write_text("1048576\n")
    (task / "pids.current").write_text("3\n")
    (task / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    usage = cgroup.usage()
    assert (usage.cpu_seconds, usage.mem_bytes, usage.pids) == (2.5, 1048576, 3)
    assert usage.mem_limit_bytes == 64 * 1024 * 1024
    assert cgroup.oom_kills() == 1
    assert cgroup.limit_hits() == 7


def test_v2_names_attach_and_remove(tmp_path: Path) -> None:
    driver = CgroupV2Driver(str(fake_v2(tmp_path)), "tessera")
    driver.prepare()
    driver.create("a", LIMITS)
    assert driver.names() == ["a"]
    assert driver.attach("b") is None
    attached = driver.attach("a")
    assert attached is not None
    (tmp_path / "tessera/a/cgroup.procs").write_text("")
    assert attached.pids() == []
    assert attached.signal(signal.SIGTERM) == 0
    for child in (tmp_path / "tessera/a").iterdir():
        child.unlink()  # cgroupfs has no files to delete; a plain directory does
    assert attached.remove()
    assert driver.names() == []


def fake_v1(root: Path) -> dict[str, str]:
    mounts = {name: str(root / name) for name in ("cpu", "cpuacct", "memory", "pids")}
    for path in mounts.values():
        Path(path).mkdir()
    return mounts


def test_v1_create_writes_limits_in_each_hierarchy(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    driver = CgroupV1Driver(mounts, "tessera/a1")
    driver.prepare()
    cgroup = driver.create("web.1", LIMITS)
    assert cgroup.paths == tuple(f"{mounts[name]}/tessera/a1/web.1" for name in mounts)
    cpu, memory = tmp_path / "cpu/tessera/a1/web.1", tmp_path / "memory/tessera/a1/web.1"
    assert (cpu / "cpu.shares").read_text() == "512"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * 1024 * 1024)
    assert not (memory / "memory.memsw.limit_in_bytes").exists()  # no swap accounting
    assert (tmp_path / "pids/tessera/a1/web.1/pids.max").read_text() == "100"


def test_v1_limits_swap_when_accounted(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    driver = CgroupV1Driver(mounts, "tessera")
    driver.prepare()
    (tmp_path / "memory/tessera/memory.memsw.limit_in_bytes").write_text("max")
    driver.prepare()
    driver.create("a", LIMITS)
    memsw = tmp_path / "memory/tessera/a/memory.memsw.limit_in_bytes"
    assert memsw.read_text() == str(64 * 1024 * 1024)


def test_v1_shared_cpu_cpuacct_mount_is_one_directory(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    mounts["cpuacct"] = mounts["cpu"]
    driver = CgroupV1Driver(mounts, "tessera")
    driver.prepare()
    cgroup = driver.create("a", LIMITS)
    assert len(cgroup.paths) == 3


def test_v1_reads_oom_counter(tmp_path: Path) -> None:
    driver = CgroupV1Driver(fake_v1(tmp_path), "tessera")
    driver.prepare()
    cgroup = driver.create("a", LIMITS)
    memory = tmp_path / "memory/tessera/a"
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup.oom_kills() == 2
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert cgroup.oom_kills() is None  # kernel before 4.13
    (memory / "memory.failcnt").write_text("5\n")
    assert cgroup.limit_hits() == 5


def test_v1_failed_create_removes_what_it_made(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    driver = CgroupV1Driver(mounts, "tessera")
    driver.prepare()
    (tmp_path / "memory/tessera/a").mkdir()  # a leftover makes mkdir fail midway
    with pytest.raises(FileExistsError):
        driver.create("a", LIMITS)
    assert not (tmp_path / "cpu/tessera/a").exists()
    assert (tmp_path / "memory/tessera/a").exists()
