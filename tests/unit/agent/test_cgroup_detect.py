"""Which cgroup driver a machine gets, from its mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.agent.cgroups import clean_prefix, detect, parse_mountinfo

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
32 30 0:29 / /proc rw - proc proc rw
"""


def test_parse_mountinfo_keeps_cgroup_mounts_only() -> None:
    mounts = parse_mountinfo(HYBRID)
    assert [mount.mount_point for mount in mounts][:2] == [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
    ]
    assert len(mounts) == 6
    assert "cpuacct" in mounts[2].super_options


def test_parse_mountinfo_unescapes_spaces() -> None:
    line = r"40 25 0:30 / /mnt/my\040cgroup rw - cgroup2 none rw"
    assert parse_mountinfo(line)[0].mount_point == "/mnt/my cgroup"


def test_hybrid_without_v2_controllers_is_v1(tmp_path: Path) -> None:
    text = HYBRID.replace("/sys/fs/cgroup/unified", str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("\n")
    detection = detect(parse_mountinfo(text), "tessera/a1")
    assert detection.driver is not None and detection.driver.version == "v1"
    hierarchies = detection.driver.describe()["hierarchies"]
    assert hierarchies == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct/tessera/a1",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/tessera/a1",
        "memory": "/sys/fs/cgroup/memory/tessera/a1",
        "pids": "/sys/fs/cgroup/pids/tessera/a1",
    }


def test_unified_with_controllers_is_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    text = f"26 25 0:23 / {tmp_path} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    detection = detect(parse_mountinfo(text), "tessera")
    assert detection.driver is not None and detection.driver.version == "v2"


def test_no_usable_hierarchy_says_why(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")  # no pids
    text = f"26 25 0:23 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    text += "29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    detection = detect(parse_mountinfo(text), "tessera")
    assert detection.driver is None
    assert "cpu, cpuacct, pids" in detection.reason


def test_clean_prefix() -> None:
    assert clean_prefix("/tessera//agent-1/") == "tessera/agent-1"
    for bad in ("", "/", "a/../b", "./x"):
        with pytest.raises(ValueError):
            clean_prefix(bad)
