"""Placement benchmark: packing quality against published policies, and engine throughput.

    .venv/bin/python -m bench.placement            # full run (about 20 minutes on 2 cores)
    .venv/bin/python -m bench.placement --quick    # small sizes, seconds (the smoke test)
    .venv/bin/python -m bench.placement --parts packing --seeds 10

Parts: `packing` (agents used versus the lower bound, per workload family:
bench/packing_workload.py `families`; `--family TEXT` picks those whose name holds TEXT),
`master` (the same workloads as Marathon apps through a running master with simulated
agents, against `tessera simulate`: bench/placement_live.py; not in the default parts),
`replicas` (what replica spreading costs in agents on small clusters: bench/replica_spread.py),
`spread` (how evenly the spread policies load the same agents),
`c1m` (the Nomad C1M shape) and `k8s` (Kubernetes scheduler_perf SchedulingBasic).
Throughput parts run in a fresh process each repetition so that peak memory is theirs.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from bench import packing_model, placement_live, replica_spread
from bench import reference_policies as ref
from bench.packing_workload import Family, PackingWorkload, families, generate, lower_bound
from tessera.model.constraints import Constraint, Operator
from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Policy, Request, Snapshot, Strategy, place

NOMAD_C1M_PER_SECOND = 3750.0
K8S_FLOOR_PER_SECOND = 810.0
C1M_GOAL_PER_SECOND = 10_000.0
C1M_GOAL_PEAK_GIB = 4.0
K8S_GOAL_PER_SECOND = 5_000.0
K8S_GOAL_P99_MS = 2.0


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between --quick and the full run."""

    seeds: int
    apps: int
    c1m_agents: int
    c1m_jobs: int
    c1m_instances: int
    k8s_agents: int
    k8s_init: int
    k8s_requests: int
    repeat: int


FULL = Sizes(
    seeds=10,
    apps=900,
    c1m_agents=5000,
    c1m_jobs=1000,
    c1m_instances=200,
    k8s_agents=5000,
    k8s_init=5000,
    k8s_requests=50_000,
    repeat=3,
)
QUICK = Sizes(
    seeds=2,
    apps=40,
    c1m_agents=50,
    c1m_jobs=10,
    c1m_instances=20,
    k8s_agents=50,
    k8s_init=10,
    k8s_requests=200,
    repeat=1,
)
UNIQUE_FRACTION = 0.3
"""Share of the multi-instance apps that carry UNIQUE hostname in the UNIQUE runs."""


# ----------------------------------------------------------------------------- packing


@dataclass
class PackingRow:
    """One policy on every seed of one workload family."""

    policy: str
    agents: list[int] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class PackingReport:
    family: str
    lower_bounds: list[int]
    rows: list[PackingRow]
    least_allocated_needed: list[int | None]


def _engine_agents(n_agents: int, machine: np.ndarray) -> list[AgentDescription]:
    cpus, mem, disk, gpus = (float(x) for x in machine)
    ports = (PortRange(31000, 32000),)
    resources = Resources(cpus=cpus, mem=mem, disk=disk, gpus=int(gpus), ports=ports)
    return [AgentDescription(f"a{i}", f"h{i}", resources) for i in range(n_agents)]


def _engine_requests(workload: PackingWorkload) -> list[Request]:
    unique = (Constraint("hostname", Operator.UNIQUE),)
    requests = []
    for app, (demand, count) in enumerate(zip(workload.demands, workload.instances, strict=True)):
        cpus, mem, disk, _ = (float(x) for x in demand)
        fixed = int(workload.fixed_port[app])
        dynamic = int(workload.host_ports[app]) - (1 if fixed else 0)
        requests.append(
            Request(
                f"/app{app}",
                int(count),
                Resources(cpus=cpus, mem=mem, disk=disk),
                ports=((fixed,) if fixed else ()) + (0,) * dynamic,
                require_ports=bool(fixed),
                constraints=unique if workload.unique[app] else (),
            )
        )
    return requests


def run_engine_packing(workload: PackingWorkload, n_agents: int) -> tuple[int, int]:
    """The real engine, default policy (binpack), all apps in one `place()` call."""
    snapshot = Snapshot.build(_engine_agents(n_agents, workload.machine))
    plan = place(snapshot, _engine_requests(workload))
    if (snapshot.free < -1e-6).any():
        raise AssertionError("engine oversubscribed an agent")
    return len({p.agent_id for p in plan.placements}), plan.unplaced_count


def _least_allocated_needed(workload: PackingWorkload, lower: int, upper: int) -> int | None:
    """Smallest cluster on which LeastAllocated places everything (Borg's cell compaction).

    None when even `upper` agents are not enough.
    """
    arrival = np.arange(len(workload.demands), dtype=np.intp)

    def fits(n_agents: int) -> bool:
        capacity = np.tile(workload.machine, (n_agents, 1))
        result = ref.place_task_at_a_time(
            capacity,
            workload.demands,
            workload.instances,
            workload.unique,
            arrival,
            ref.k8s_least_allocated,
            workload.fixed_port,
        )
        return result.unplaced == 0

    if not fits(upper):
        return None
    while lower < upper:
        middle = (lower + upper) // 2
        if fits(middle):
            upper = middle
        else:
            lower = middle + 1
    return upper


def _reference_runs(
    workload: PackingWorkload,
) -> list[tuple[str, np.ndarray, ref.Scorer]]:
    arrival = np.arange(len(workload.demands), dtype=np.intp)
    largest = ref.decreasing_dominant_share(workload.demands, workload.machine)
    return [
        ("first-fit-decreasing", largest, ref.first_fit),
        ("nomad-bestfit-v3", arrival, ref.nomad_bestfit_v3),
        ("nomad-bestfit-v3, largest first", largest, ref.nomad_bestfit_v3),
        ("k8s-most-allocated", arrival, ref.k8s_most_allocated),
        ("k8s-most-allocated, largest first", largest, ref.k8s_most_allocated),
        ("k8s-least-allocated", arrival, ref.k8s_least_allocated),
    ]


ENGINE_ROW = "tessera engine (place(), binpack)"
MODEL_ROW = "tessera binpack in the engine model, all hooks"


def run_packing(sizes: Sizes, family: Family) -> PackingReport:
    """Every policy on `sizes.seeds` workloads of `family`, on 1.5 x LB + 2 agents."""
    rows: dict[str, PackingRow] = {}
    bounds: list[int] = []
    needed: list[int | None] = []

    def record(name: str, agents: int, unplaced: int, started: float) -> None:
        row = rows.setdefault(name, PackingRow(name))
        row.agents.append(agents)
        row.unplaced.append(unplaced)
        row.seconds.append(time.perf_counter() - started)

    for workload in (family.draw(seed) for seed in range(sizes.seeds)):
        bound = lower_bound(workload)
        n_agents = math.ceil(1.5 * bound) + 2
        bounds.append(bound)
        capacity = np.tile(workload.machine, (n_agents, 1))
        for name, order, scorer in _reference_runs(workload):
            started = time.perf_counter()
            result = ref.place_task_at_a_time(
                capacity,
                workload.demands,
                workload.instances,
                workload.unique,
                order,
                scorer,
                workload.fixed_port,
            )
            record(name, result.agents_used, result.unplaced, started)
        needed.append(_least_allocated_needed(workload, bound, n_agents))
        started = time.perf_counter()
        used, unplaced = run_engine_packing(workload, n_agents)
        record(ENGINE_ROW, used, unplaced, started)
        started = time.perf_counter()
        used, unplaced = packing_model.place_groups(workload, n_agents, packing_model.CHOSEN)
        record(MODEL_ROW, used, unplaced, started)
    return PackingReport(family.name, bounds, list(rows.values()), needed)


def format_packing(report: PackingReport) -> str:
    bounds = np.array(report.lower_bounds)
    lines = [
        f"Packing, {report.family}: {len(bounds)} seeds, lower bounds {bounds.tolist()}",
        "",
        "| policy | mean over LB | worst over LB | agents per seed | unplaced | s/seed |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in report.rows:
        agents = np.array(row.agents)
        gap = (agents - bounds) / bounds * 100
        lines.append(
            f"| {row.policy} | {gap.mean():.1f}% | {gap.max():.1f}% | {agents.tolist()} "
            f"| {sum(row.unplaced)} | {statistics.median(row.seconds):.2f} |"
        )
    needed = report.least_allocated_needed
    shown = [
        str(n) if n is not None else f">{math.ceil(1.5 * b) + 2}"
        for n, b in zip(needed, bounds.tolist(), strict=True)
    ]
    found = [
        (n - b) / b * 100 for n, b in zip(needed, bounds.tolist(), strict=True) if n is not None
    ]
    mean = (
        f"{statistics.mean(found):.1f}% over LB on average where found" if found else "none found"
    )
    lines += [
        "",
        "k8s-least-allocated spreads over every agent it is given (1.5 x LB + 2); the "
        f"smallest cluster it places everything on: [{', '.join(shown)}] ({mean}).",
    ]
    ours = [row for row in report.rows if row.policy in (ENGINE_ROW, MODEL_ROW)]
    for row in ours:
        agents = np.array(row.agents)
        beaten = [
            r.policy for r in report.rows if r not in ours and (agents > np.array(r.agents)).any()
        ]
        verdict = "never more agents than any reference" if not beaten else f"loses to {beaten}"
        name = "engine" if row.policy == ENGINE_ROW else "model"
        lines.append(f"- tessera {name}: {verdict}, on every seed.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ spread


@dataclass
class SpreadReport:
    """Per policy and seed: the highest and the spread of agents' dominant utilisation."""

    unique_fraction: float
    peak: dict[str, list[float]]
    deviation: dict[str, list[float]]
    unplaced: dict[str, int]


def _dominant_use(free: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Per agent, the used fraction of its fuller resource among cpus and mem."""
    used = 1.0 - free[:, :2] / capacity[:, :2]
    return used.max(axis=1)  # type: ignore[no-any-return]


def run_spread(sizes: Sizes, unique_fraction: float) -> SpreadReport:
    """The packing workloads on the same 1.5 x LB + 2 agents, placed to spread load evenly."""
    report = SpreadReport(unique_fraction, {}, {}, {})

    def record(name: str, free: np.ndarray, capacity: np.ndarray, unplaced: int) -> None:
        use = _dominant_use(free, capacity)
        report.peak.setdefault(name, []).append(float(use.max()))
        report.deviation.setdefault(name, []).append(float(use.std()))
        report.unplaced[name] = report.unplaced.get(name, 0) + unplaced

    for seed in range(sizes.seeds):
        workload = generate(seed, sizes.apps, unique_fraction)
        n_agents = math.ceil(1.5 * lower_bound(workload)) + 2
        capacity = np.tile(workload.machine, (n_agents, 1))
        arrival = np.arange(len(workload.demands), dtype=np.intp)
        for name, scorer in (
            ("k8s-least-allocated", ref.k8s_least_allocated),
            ("nomad-spread", ref.nomad_spread),
        ):
            result = ref.place_task_at_a_time(
                capacity, workload.demands, workload.instances, workload.unique, arrival, scorer
            )
            record(name, result.free, capacity, result.unplaced)
        snapshot = Snapshot.build(_engine_agents(n_agents, workload.machine))
        plan = place(snapshot, _engine_requests(workload), Policy(strategy=Strategy.SPREAD))
        record(SPREAD_ROW, snapshot.free, snapshot.total, plan.unplaced_count)
    return report


SPREAD_ROW = "tessera engine (place(), spread)"


def format_spread(report: SpreadReport) -> str:
    title = (
        f"UNIQUE hostname on {report.unique_fraction:.0%} of the multi-instance apps"
        if report.unique_fraction
        else "no constraints"
    )
    lines = [
        f"Spread, {title}: dominant utilisation per agent (max of cpus and mem used), "
        f"mean over {len(next(iter(report.peak.values())))} seeds; lower and flatter is better",
        "",
        "| policy | highest agent | standard deviation | unplaced |",
        "|---|---:|---:|---:|",
    ]
    for name, peaks in report.peak.items():
        lines.append(
            f"| {name} | {statistics.mean(peaks):.3f} | "
            f"{statistics.mean(report.deviation[name]):.3f} | {report.unplaced[name]} |"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------- throughput


@dataclass
class ThroughputResult:
    """One repetition of a throughput shape, measured in its own process."""

    shape: str
    placed: int
    unplaced: int
    seconds: float
    per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mib: float
    build_seconds: float


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_c1m(sizes: Sizes, strategy: Strategy = Strategy.BINPACK) -> ThroughputResult:
    """Nomad C1M: agents of 8 cpus / 30 GiB in 5 classes; jobs of 5 groups, one per class.

    One `place()` call per job (Nomad evaluates each job on its own), all plans kept.
    Binpack stacks a group on few agents; spread puts each task of a group on its own
    agent (one commit per task), the harder case for the engine.
    """
    policy = Policy(strategy=strategy)
    started = time.perf_counter()
    node = Resources(cpus=8.0, mem=30720.0)
    agents = [
        AgentDescription(f"a{i}", f"h{i}", node, attributes={"class": f"c{i % 5}"})
        for i in range(sizes.c1m_agents)
    ]
    snapshot = Snapshot.build(agents)
    task = Resources(cpus=0.02, mem=15.0)
    classes = [(Constraint("class", Operator.IS, f"c{g}"),) for g in range(5)]
    jobs = [
        [
            Request(f"/job{j}/g{g}", sizes.c1m_instances, task, constraints=classes[g])
            for g in range(5)
        ]
        for j in range(sizes.c1m_jobs)
    ]
    build = time.perf_counter() - started
    plans = []
    latencies = np.zeros(len(jobs))
    for index, job in enumerate(jobs):
        begin = time.perf_counter()
        plans.append(place(snapshot, job, policy))
        latencies[index] = time.perf_counter() - begin
    if (snapshot.free < -1e-6).any():
        raise AssertionError("engine oversubscribed an agent")
    placed = sum(plan.placed_count for plan in plans)
    unplaced = sum(plan.unplaced_count for plan in plans)
    return _result(f"c1m-{strategy.value}", placed, unplaced, latencies, build)


def run_k8s(sizes: Sizes, strategy: Strategy = Strategy.BINPACK) -> ThroughputResult:
    """scheduler_perf SchedulingBasic: 4 cpus / 32 GiB nodes, pods of 0.1 cpus / 500 MiB.

    `k8s_init` pods are placed untimed first (as scheduler_perf's initPods), then every
    measured pod is its own request and its own `place()` call on the same snapshot.
    Kubernetes' default scoring spreads (LeastAllocated); both policies are measured.
    """
    policy = Policy(strategy=strategy)
    started = time.perf_counter()
    node = Resources(cpus=4.0, mem=32768.0)
    snapshot = Snapshot.build(
        AgentDescription(f"a{i}", f"h{i}", node) for i in range(sizes.k8s_agents)
    )
    pod = Resources(cpus=0.1, mem=500.0)
    for i in range(sizes.k8s_init):
        place(snapshot, [Request(f"/init{i}", 1, pod)], policy)
    requests = [Request(f"/pod{i}", 1, pod) for i in range(sizes.k8s_requests)]
    build = time.perf_counter() - started
    latencies = np.zeros(len(requests))
    placed = unplaced = 0
    for index, request in enumerate(requests):
        begin = time.perf_counter()
        plan = place(snapshot, [request], policy)
        latencies[index] = time.perf_counter() - begin
        placed += plan.placed_count
        unplaced += plan.unplaced_count
    if (snapshot.free < -1e-6).any():
        raise AssertionError("engine oversubscribed an agent")
    return _result(f"k8s-{strategy.value}", placed, unplaced, latencies, build)


def _result(
    shape: str, placed: int, unplaced: int, latencies: np.ndarray, build: float
) -> ThroughputResult:
    seconds = float(latencies.sum())
    return ThroughputResult(
        shape=shape,
        placed=placed,
        unplaced=unplaced,
        seconds=seconds,
        per_second=placed / seconds if seconds > 0 else 0.0,
        latency_p50_ms=float(np.percentile(latencies, 50) * 1000),
        latency_p99_ms=float(np.percentile(latencies, 99) * 1000),
        peak_rss_mib=_peak_rss_mib(),
        build_seconds=build,
    )


SHAPES: dict[str, Callable[[Sizes], ThroughputResult]] = {
    "c1m-binpack": run_c1m,
    "c1m-spread": partial(run_c1m, strategy=Strategy.SPREAD),
    "k8s-binpack": run_k8s,
    "k8s-spread": partial(run_k8s, strategy=Strategy.SPREAD),
}


def run_shape(shape: str, sizes: Sizes, quick: bool, in_process: bool) -> list[ThroughputResult]:
    """`sizes.repeat` repetitions, each in a fresh interpreter unless `in_process`."""
    if in_process:
        return [SHAPES[shape](sizes) for _ in range(sizes.repeat)]
    results = []
    for _ in range(sizes.repeat):
        command = [sys.executable, "-m", "bench.placement", "--worker", shape]
        if quick:
            command.append("--quick")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(ThroughputResult(**json.loads(output.strip().splitlines()[-1])))
    return results


def format_throughput(shape: str, results: Sequence[ThroughputResult]) -> str:
    def median(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in results))

    rate, p99, peak = median("per_second"), median("latency_p99_ms"), median("peak_rss_mib")
    runs = ", ".join(f"{r.per_second:,.0f}/s" for r in results)
    if shape.startswith("c1m"):
        unit, call = "placements", "per job (5 groups)"
        references = [
            f"Nomad C1M 3,750/s on 5 x 32 vCPU: x{rate / NOMAD_C1M_PER_SECOND:.1f}",
            f"goal >= 10,000/s: x{rate / C1M_GOAL_PER_SECOND:.2f}; "
            f"peak {peak / 1024:.2f} GiB vs goal < 4 GiB",
        ]
    else:
        unit, call = "requests", "per request"
        references = [
            f"Kubernetes CI floor 810 pods/s (with API server): x{rate / K8S_FLOOR_PER_SECOND:.1f}",
            f"goal >= 5,000/s: x{rate / K8S_GOAL_PER_SECOND:.2f}; p99 {p99:.2f} ms vs goal <= 2 ms",
        ]
    first = results[0]
    return "\n".join(
        [
            f"{shape}: {first.placed:,} placed, {first.unplaced:,} unplaced; "
            f"median of {len(results)}: {rate:,.0f} {unit}/s ({runs}); "
            f"latency {call} p50 {median('latency_p50_ms'):.3f} ms, p99 {p99:.3f} ms; "
            f"peak RSS {peak:,.0f} MiB; cluster build {median('build_seconds'):.1f} s (untimed)",
            *(f"  - {line}" for line in references),
        ]
    )


# ------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--parts", default="packing,spread,c1m,k8s", help="comma-separated")
    parser.add_argument("--seeds", type=int, help="packing seeds (default 10, quick 2)")
    parser.add_argument("--repeat", type=int, help="throughput repetitions (default 3)")
    parser.add_argument("--in-process", action="store_true", help="no worker processes")
    parser.add_argument("--apps", type=int, help="apps per workload (default 900, quick 40)")
    parser.add_argument("--family", help="packing: only families whose name holds this")
    parser.add_argument("--worker", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.worker:
        print(json.dumps(asdict(SHAPES[args.worker](sizes))))
        return 0
    overrides = {"seeds": args.seeds, "repeat": args.repeat, "apps": args.apps}
    sizes = Sizes(**{**asdict(sizes), **{k: v for k, v in overrides.items() if v}})
    parts = args.parts.split(",")
    if "packing" in parts:
        for family in families(sizes.apps, UNIQUE_FRACTION, small=args.quick):
            if args.family and args.family not in family.name:
                continue
            print(format_packing(run_packing(sizes, family)), end="\n\n", flush=True)
    if "spread" in parts:
        for fraction in (0.0, UNIQUE_FRACTION):
            print(format_spread(run_spread(sizes, fraction)), end="\n\n", flush=True)
    if "replicas" in parts:
        seeds = args.seeds or (20 if args.quick else 200)
        print(replica_spread.format_replicas(replica_spread.run_replicas(seeds)), end="\n\n")
    if "master" in parts:
        chosen = [f for f in families(sizes.apps) if args.family and args.family in f.name]
        rows = placement_live.run_live(sizes.seeds, sizes.apps, chosen[0] if chosen else None)
        print(placement_live.format_live(rows), end="\n\n", flush=True)
    for shape in SHAPES:
        if shape.split("-")[0] in parts:
            results = run_shape(shape, sizes, args.quick, args.in_process)
            print(format_throughput(shape, results), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
