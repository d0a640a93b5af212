"""Random multi-resource packing workloads for the placement benchmark, and their lower bound."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Column order shared with tessera.placement.scoring: cpus, mem (MiB), disk (MiB), gpus.
N_RESOURCES = 4
MACHINE = np.array([32.0, 131072.0, 512000.0, 0.0])
"""One identical machine: 32 cpus, 128 GiB, 500 GiB disk, no GPU (a zero-capacity column)."""


@dataclass(frozen=True)
class PackingWorkload:
    """Apps (requests) of identical tasks, in submission order.

    `demands[i]` is one task of app i; `instances[i]` how many tasks it asks for;
    `unique[i]` whether it carries `UNIQUE hostname` (at most one task per agent).
    """

    seed: int
    demands: NDArray[np.float64]
    instances: NDArray[np.int64]
    unique: NDArray[np.bool_]
    machine: NDArray[np.float64]

    @property
    def n_tasks(self) -> int:
        return int(self.instances.sum())

    def total_demand(self) -> NDArray[np.float64]:
        return (self.demands * self.instances[:, None]).sum(axis=0)  # type: ignore[no-any-return]


def generate(
    seed: int, n_apps: int, unique_fraction: float = 0.0, machine: NDArray[np.float64] = MACHINE
) -> PackingWorkload:
    """Draw `n_apps` apps.

    Per app: cpus and mem are lognormal (medians 1 cpu and 4 GiB, sigma 0.8) with
    correlation 0.5 in log space, so the mix holds cpu-heavy and memory-heavy tasks with
    neither resource dominating the totals; 8% of apps are large (about 5x in both).
    Instances follow a Zipf law (half the apps are singletons, capped at 40). Disk is
    small and never binding; gpus are 0. With `unique_fraction`, that share of the apps
    with two or more instances carries `UNIQUE hostname`.
    """
    rng = np.random.default_rng(seed)
    correlation, sigma = 0.5, 0.7
    z_cpu = rng.standard_normal(n_apps)
    z_mem = correlation * z_cpu + math.sqrt(1 - correlation**2) * rng.standard_normal(n_apps)
    large = rng.random(n_apps) < 0.05
    boost = np.where(large, np.exp(rng.normal(math.log(4.0), 0.3, n_apps)), 1.0)
    cpus = np.exp(sigma * z_cpu) * 1.0 * boost
    mem = np.exp(sigma * z_mem) * 4096.0 * boost
    cpus = np.clip(np.round(cpus, 1), 0.1, 0.5 * machine[0])
    mem = np.clip(np.round(mem / 32.0) * 32.0, 128.0, 0.5 * machine[1])
    disk = np.clip(np.round(np.exp(rng.normal(math.log(2048.0), 0.5, n_apps))), 64.0, None)
    demands = np.zeros((n_apps, N_RESOURCES))
    demands[:, 0], demands[:, 1], demands[:, 2] = cpus, mem, disk
    instances = np.minimum(rng.zipf(1.8, n_apps), 40).astype(np.int64)
    unique = (instances >= 2) & (rng.random(n_apps) < unique_fraction)
    return PackingWorkload(seed, demands, instances, unique, machine.astype(np.float64))


def lower_bound(workload: PackingWorkload) -> int:
    """max over resources of ceil(total demand / machine capacity), and UNIQUE's own floor.

    An app with `UNIQUE hostname` needs as many agents as it has instances.
    """
    total = workload.total_demand()
    has_capacity = workload.machine > 0
    # The tiny tolerance keeps float noise from turning an exact 40.0 into 41 machines.
    per_resource = np.ceil(total[has_capacity] / workload.machine[has_capacity] - 1e-9)
    bound = int(per_resource.max())
    if workload.unique.any():
        bound = max(bound, int(workload.instances[workload.unique].max()))
    return bound
