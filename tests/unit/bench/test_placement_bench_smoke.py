"""The placement benchmark's quick mode runs in-process and reports sane numbers."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import placement  # noqa: E402
from bench.packing_workload import (  # noqa: E402
    Family,
    MixSpec,
    families,
    generate,
    generate_mix,
    lower_bound,
)

QUICK_FAMILIES = families(placement.QUICK.apps, placement.UNIQUE_FRACTION, small=True)


@pytest.mark.parametrize("family", QUICK_FAMILIES, ids=lambda family: family.name)
def test_packing_never_beats_the_lower_bound_and_places_everything(family: Family) -> None:
    report = placement.run_packing(placement.QUICK, family)
    bounds = report.lower_bounds
    assert len(bounds) == placement.QUICK.seeds
    policies = {row.policy for row in report.rows}
    assert {placement.ENGINE_ROW, "nomad-bestfit-v3"} <= policies
    for row in report.rows:
        assert all(used >= bound for used, bound in zip(row.agents, bounds, strict=True))
    engine = next(row for row in report.rows if row.policy == placement.ENGINE_ROW)
    assert sum(engine.unplaced) == 0
    needed = report.least_allocated_needed
    assert all(n is None or n >= b for n, b in zip(needed, bounds, strict=True))
    assert family.name in placement.format_packing(report)


def test_new_families_differ_from_the_original_in_what_they_promise() -> None:
    mixed = generate_mix(3, MixSpec())
    assert 100 <= len(mixed.demands) <= 200
    per_cpu = mixed.demands[:, 1] / mixed.demands[:, 0] / 1024
    assert per_cpu.min() < 2 and per_cpu.max() > 8  # the 1 and 12 GiB per cpu classes
    assert (mixed.demands[:, :2] <= mixed.machine[:2] / 2).all()
    with_ports = (mixed.host_ports > 0).mean()
    assert 0.2 < with_ports < 0.5
    assert (mixed.fixed_port[mixed.host_ports == 0] == 0).all()


def test_lower_bound_counts_tasks_that_require_one_port() -> None:
    base = generate(0, 30)
    fixed = np.zeros(len(base.demands), dtype=np.int64)
    fixed[:3] = 31000  # three apps pin the same host port: one task of them per agent
    pinned = replace(base, host_ports=np.ones_like(fixed), fixed_port=fixed)
    assert lower_bound(pinned) >= int(base.instances[:3].sum())
    assert lower_bound(pinned) >= lower_bound(base)


def test_spread_places_everything_within_capacity() -> None:
    report = placement.run_spread(placement.QUICK, placement.UNIQUE_FRACTION)
    assert placement.SPREAD_ROW in report.peak
    for name, peaks in report.peak.items():
        assert all(0 < peak <= 1 + 1e-9 for peak in peaks), name
    assert report.unplaced[placement.SPREAD_ROW] == 0
    assert "Spread" in placement.format_spread(report)


def test_lower_bound_counts_the_binding_resource_and_unique() -> None:
    workload = generate(0, 30, unique_fraction=1.0)
    total = workload.total_demand()
    by_resource = max(int(-(-total[i] // workload.machine[i])) for i in (0, 1, 2))
    assert lower_bound(workload) >= by_resource
    assert lower_bound(workload) >= int(workload.instances[workload.unique].max())


@pytest.mark.parametrize("shape", sorted(placement.SHAPES))
def test_throughput_shapes_place_every_task(shape: str) -> None:
    sizes = placement.QUICK
    (result,) = placement.run_shape(shape, sizes, quick=True, in_process=True)
    expected = (
        sizes.c1m_jobs * 5 * sizes.c1m_instances if shape.startswith("c1m") else sizes.k8s_requests
    )
    assert result.placed == expected
    assert result.unplaced == 0
    assert result.per_second > 0
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms
    assert result.peak_rss_mib > 0
    assert shape in placement.format_throughput(shape, [result])


def test_command_line_quick_mode_prints_every_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert placement.main(["--quick", "--in-process", "--parts", "c1m,k8s"]) == 0
    out = capsys.readouterr().out
    for shape in placement.SHAPES:
        assert f"{shape}:" in out


def test_replica_spreading_report_counts_both_policies() -> None:
    from bench.replica_spread import format_replicas, run_replicas

    report = run_replicas(10)
    assert report.workloads == 10 and report.apps >= 80
    assert report.stacked["spread"] <= report.stacked["plain"]
    assert report.agents["spread"] >= report.agents["plain"] > 0
    assert "apps with every instance on one agent" in format_replicas(report)
