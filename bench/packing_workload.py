"""Random multi-resource packing workloads for the placement benchmark, and their lower bound."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
    `host_ports[i]` is how many host ports each task asks for and `fixed_port[i]` a host
    port it requires exactly (Marathon `requirePorts`; 0: all its ports are dynamic). Two
    tasks that require one port cannot share an agent, whichever apps they belong to.
    """

    seed: int
    demands: NDArray[np.float64]
    instances: NDArray[np.int64]
    unique: NDArray[np.bool_]
    machine: NDArray[np.float64]
    host_ports: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fixed_port: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        apps = len(self.demands)
        if len(self.host_ports) == 0:
            object.__setattr__(self, "host_ports", np.zeros(apps, dtype=np.int64))
        if len(self.fixed_port) == 0:
            object.__setattr__(self, "fixed_port", np.zeros(apps, dtype=np.int64))

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
    """max over resources of ceil(total demand / machine capacity), and the floors of the
    one-per-agent rules.

    An app with `UNIQUE hostname` needs as many agents as it has instances; the tasks that
    require one host port need as many agents as there are of them (all apps together).
    """
    total = workload.total_demand()
    has_capacity = workload.machine > 0
    # The tiny tolerance keeps float noise from turning an exact 40.0 into 41 machines.
    per_resource = np.ceil(total[has_capacity] / workload.machine[has_capacity] - 1e-9)
    bound = int(per_resource.max())
    if workload.unique.any():
        bound = max(bound, int(workload.instances[workload.unique].max()))
    fixed = workload.fixed_port > 0
    if fixed.any():
        per_port = np.bincount(workload.fixed_port[fixed], weights=workload.instances[fixed])
        bound = max(bound, int(per_port.max()))
    return bound


# ------------------------------------------------------------------- workload families


MAX_LARGE_INSTANCES = 6


@dataclass(frozen=True)
class MixSpec:
    """A family of workloads unlike `generate`'s: what a new user's batch looks like.

    Each app draws a memory-per-cpu class (GiB per cpu, with `class_weights`); its cpus
    are lognormal around `cpu_median`, its memory the class ratio times a lognormal
    factor (sigma 0.25). `large_fraction` of the apps are large: their fuller resource
    takes a uniform share in `large_share` of a machine. No task takes more than half a
    machine in any resource. `port_fraction` of the apps ask for one or two host ports;
    `fixed_fraction` of those require one exact port, drawn from `port_pool` ports.
    """

    apps: tuple[int, int] = (100, 200)
    mem_classes: tuple[float, ...] = (1.0, 4.0, 12.0)
    class_weights: tuple[float, ...] = (0.4, 0.35, 0.25)
    cpu_median: float = 1.0
    cpu_sigma: float = 0.7
    large_fraction: float = 0.05
    large_share: tuple[float, float] = (0.25, 0.5)
    unique_fraction: float = 0.0
    port_fraction: float = 1 / 3
    fixed_fraction: float = 0.2
    port_pool: int = 32
    zipf: float = 1.8
    max_instances: int = 20


def generate_mix(
    seed: int, spec: MixSpec, machine: NDArray[np.float64] = MACHINE
) -> PackingWorkload:
    """Draw one workload of the family `spec` (the number of apps too)."""
    rng = np.random.default_rng(seed)
    n_apps = int(rng.integers(spec.apps[0], spec.apps[1] + 1))
    weights = np.array(spec.class_weights) / sum(spec.class_weights)
    gib_per_cpu = np.array(spec.mem_classes)[rng.choice(len(weights), n_apps, p=weights)]
    cpus = spec.cpu_median * np.exp(spec.cpu_sigma * rng.standard_normal(n_apps))
    mem = cpus * gib_per_cpu * 1024.0 * np.exp(0.25 * rng.standard_normal(n_apps))
    large = rng.random(n_apps) < spec.large_fraction
    share = rng.uniform(*spec.large_share, n_apps)
    # A large task's fuller resource takes `share` of a machine, the other its class ratio.
    mem_bound = gib_per_cpu * 1024.0 >= machine[1] / machine[0]
    large_cpus = np.where(
        mem_bound, share * machine[1] / (gib_per_cpu * 1024.0), share * machine[0]
    )
    cpus = np.where(large, large_cpus, cpus)
    mem = np.where(large, large_cpus * gib_per_cpu * 1024.0, mem)
    demands = np.zeros((n_apps, N_RESOURCES))
    demands[:, 0] = np.clip(np.round(cpus, 1), 0.1, 0.5 * machine[0])
    demands[:, 1] = np.clip(np.round(mem / 32.0) * 32.0, 128.0, 0.5 * machine[1])
    demands[:, 2] = np.clip(np.round(np.exp(rng.normal(math.log(2048.0), 0.5, n_apps))), 64, None)
    instances = np.minimum(rng.zipf(spec.zipf, n_apps), spec.max_instances).astype(np.int64)
    instances = np.where(large, np.minimum(instances, MAX_LARGE_INSTANCES), instances)
    unique = (instances >= 2) & (rng.random(n_apps) < spec.unique_fraction)
    with_ports = rng.random(n_apps) < spec.port_fraction
    host_ports = np.where(with_ports, rng.integers(1, 3, n_apps), 0).astype(np.int64)
    fixed = with_ports & (rng.random(n_apps) < spec.fixed_fraction)
    fixed_port = np.where(fixed, 31000 + rng.integers(0, spec.port_pool, n_apps), 0)
    return PackingWorkload(
        seed,
        demands,
        instances,
        unique,
        machine.astype(np.float64),
        host_ports,
        fixed_port.astype(np.int64),
    )


@dataclass(frozen=True)
class Family:
    """A named way to draw packing workloads: seed -> workload."""

    name: str
    draw: Callable[[int], PackingWorkload]


def families(apps: int = 900, unique_fraction: float = 0.3, small: bool = False) -> list[Family]:
    """Every family the packing benchmark reports: the original two, then new users'.

    `small` draws a tenth of the apps of every new family (the quick smoke test).
    """

    def mix(spec: MixSpec) -> Callable[[int], PackingWorkload]:
        if small:
            spec = replace(spec, apps=(spec.apps[0] // 10, spec.apps[1] // 10))
        return lambda seed: generate_mix(seed, spec)

    new_user = MixSpec()
    return [
        Family(f"original, {apps} apps", lambda seed: generate(seed, apps)),
        Family(
            f"original, {apps} apps, UNIQUE {unique_fraction:.0%}",
            lambda seed: generate(seed, apps, unique_fraction),
        ),
        Family("new user: 100-200 apps, 1/4/12 GiB per cpu, ports", mix(new_user)),
        Family("new user, UNIQUE on 60%", mix(replace(new_user, unique_fraction=0.6))),
        Family("new user, 25% large tasks", mix(replace(new_user, large_fraction=0.25))),
        Family(
            "new user, memory-heavy",
            mix(replace(new_user, class_weights=(0.15, 0.35, 0.5))),
        ),
        Family(
            "many small apps: 500-800, 0.25 cpu, dynamic ports",
            mix(
                replace(
                    new_user,
                    apps=(500, 800),
                    cpu_median=0.25,
                    cpu_sigma=0.5,
                    large_fraction=0,
                    fixed_fraction=0,
                )
            ),
        ),
    ]
