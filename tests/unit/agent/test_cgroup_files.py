"""Pure cgroup arithmetic and file parsing."""

from __future__ import annotations

import pytest

from tessera.agent.cgroup_files import (
    CgroupLimits,
    cpu_shares,
    parse_keyed,
    parse_limit,
    parse_pids,
    shares_to_weight,
)


@pytest.mark.parametrize(
    ("cpus", "shares"),
    [(0.001, 2), (0.1, 102), (0.5, 512), (1.0, 1024), (4.0, 4096), (1000.0, 262144)],
)
def test_cpu_shares_follow_mesos(cpus: float, shares: int) -> None:
    assert cpu_shares(cpus) == shares


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(2, 1), (1, 1), (102, 4), (1024, 39), (2048, 79), (262144, 10000), (10**7, 10000)],
)
def test_shares_map_to_weight_like_runc(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_limits_in_kernel_units() -> None:
    limits = CgroupLimits(cpus=0.25, mem_mib=64, cpu_hard_limit=True, pids_limit=100)
    assert limits.mem_bytes == 64 * 1024 * 1024
    assert limits.shares == 256
    assert limits.cfs_quota_us == 25_000
    assert CgroupLimits(cpus=0.001, mem_mib=1).cfs_quota_us == 1000  # the kernel minimum


def test_parse_keyed_reads_memory_events_and_oom_control() -> None:
    events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert parse_keyed(events)["oom_kill"] == 1
    assert parse_keyed(events)["max"] == 12
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert parse_keyed(oom_control) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    assert parse_keyed("garbage line\n\n") == {}


def test_parse_limit() -> None:
    assert parse_limit("max\n") is None
    assert parse_limit("9223372036854771712\n") is None  # v1 "unlimited"
    assert parse_limit("67108864\n") == 67108864
    assert parse_limit("") is None


def test_parse_pids() -> None:
    assert parse_pids("12\n345\n") == [12, 345]
    assert parse_pids("") == []
