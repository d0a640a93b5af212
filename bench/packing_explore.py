"""The packing heuristics tried for the binpack policy, measured in the engine model.

    .venv/bin/python -m bench.packing_explore [--seeds 5] [--apps 900]

Every variant places the same workloads through `packing_model.place_groups` (the
engine's group fill: per request, score all agents once, fill the best first) and
prints the mean and worst excess over the lower bound per workload family: the four
below, then the new users' families of `packing_workload.families` (spreading is not
modelled; required host ports are). The last
row is item-level bin-centric packing (Panigrahy et al.), which ignores the groups.
It reaches into `scoring` internals (`_LookAhead`, `BALANCE_SLACK`) to vary them.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray

from bench import packing_model as pm
from bench import reference_policies as ref
from bench.packing_workload import PackingWorkload, generate, lower_bound
from bench.packing_workload import families as packing_families
from tessera.placement import scoring

FloatArray = NDArray[np.float64]
Variant = Callable[[PackingWorkload, int], int]


def _shares(workload: PackingWorkload) -> FloatArray:
    machine = workload.machine
    safe = np.where(machine > 0, machine, 1.0)
    return np.where(machine > 0, workload.demands / safe, 0.0)


def _sorted_by(size: Callable[[PackingWorkload], FloatArray]) -> pm.Prepare:
    def prepare(workload: PackingWorkload, free: FloatArray) -> tuple[NDArray[np.intp], None]:
        return np.argsort(-size(workload), kind="stable").astype(np.intp), None

    return prepare


ARRIVAL: pm.Prepare = lambda w, f: (np.arange(len(w.demands), dtype=np.intp), None)  # noqa: E731
BY_SUM = _sorted_by(lambda w: _shares(w).sum(axis=1))
BY_MAX = _sorted_by(lambda w: _shares(w).max(axis=1))
BY_L2 = _sorted_by(lambda w: np.linalg.norm(_shares(w), axis=1))
# Panigrahy et al.'s FFDAvgSum: resources weighted by their total demand.
BY_AVGSUM = _sorted_by(lambda w: _shares(w) @ (_shares(w) * w.instances[:, None]).sum(axis=0))


def _residual(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    safe = np.where(capacity > 0, capacity, 1.0)
    return np.where(capacity > 0, (free - demand) / safe, 0.0)[:, :2]


def l2_score(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Norm-based greedy: the smallest L2 norm of the room left after the task."""
    return -np.linalg.norm(_residual(free, capacity, demand), axis=1)  # type: ignore[no-any-return]


def dot_score(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Tetris alignment: demand . free room (both normalised by the agent)."""
    safe = np.where(capacity > 0, capacity, 1.0)
    room = np.where(capacity > 0, free / safe, 0.0)[:, :2]
    need = np.where(capacity > 0, demand / safe, 0.0)[:, :2]
    return (room * need).sum(axis=1)  # type: ignore[no-any-return]


def imbalance_score(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Best fit minus twice the cpu/mem imbalance left after the task."""
    left = _residual(free, capacity, demand)
    return -left.sum(axis=1) - 2.0 * np.abs(left[:, 0] - left[:, 1])  # type: ignore[no-any-return]


@contextmanager
def balance_slack(value: float) -> Iterator[None]:
    saved = scoring.BALANCE_SLACK
    scoring.BALANCE_SLACK = value
    try:
        yield
    finally:
        scoring.BALANCE_SLACK = saved


def _balanced(prepare: pm.Prepare) -> pm.Prepare:
    def with_limits(
        workload: PackingWorkload, free: FloatArray
    ) -> tuple[NDArray[np.intp], pm.Limits]:
        return prepare(workload, free)[0], scoring.binpack_copy_limits

    return with_limits


class _Measure(scoring._LookAhead):
    """The look-ahead with another way for the focus agent to pick a request."""

    measure = "dotn"

    def _best_for(self, agent: int, candidates: NDArray[np.intp]) -> int | None:
        if self.measure == "dotn":
            return super()._best_for(agent, candidates)
        free, capacity = self.free[agent], self.capacity[agent]
        demands = self.demands[candidates]
        asked = demands > 0
        ratio = np.divide(free, demands, out=np.full(demands.shape, np.inf), where=asked)
        fit = np.minimum(np.floor(ratio.min(axis=1) + 1e-9), self.per_agent[candidates])
        fits = fit >= 1
        if not fits.any():
            return None
        safe = np.where(capacity > 0, capacity, 1.0)
        room = np.where(capacity > 0, free / safe, 0.0)[:2]
        size = np.where(capacity > 0, demands[fits] / safe, 0.0)[:, :2]
        if self.measure == "dot1":  # alignment of one copy, whatever the group
            value = (size * room).sum(axis=1)
        else:  # "fill": least room left after the copies, minus its cpu/mem imbalance
            left = room - fit[fits, None] * size
            value = -left.sum(axis=1) - np.abs(left[:, 0] - left[:, 1])
        return int(candidates[fits][int(np.argmax(value))])


def _look_ahead(measure: str, balanced: bool) -> pm.Prepare:
    def prepare(
        workload: PackingWorkload, free: FloatArray
    ) -> tuple[NDArray[np.intp], pm.Limits | None]:
        capacity = np.tile(workload.machine, (len(free), 1))
        per_agent = pm.per_agent_cap(workload)
        agents = _Measure(free, capacity, workload.demands, workload.instances, per_agent, balanced)
        agents.measure = measure
        spread = per_agent < workload.instances
        first = agents.order(np.flatnonzero(spread))
        order = np.concatenate([first, agents.order(np.flatnonzero(~spread))]).astype(np.intp)
        return order, scoring.binpack_copy_limits if balanced else None

    return prepare


def _model(prepare: pm.Prepare, score: pm.Score = scoring.binpack_scores) -> Variant:
    policy = pm.GroupPolicy("variant", prepare, score)
    return lambda workload, n_agents: pm.place_groups(workload, n_agents, policy)[0]


def bin_centric(workload: PackingWorkload, n_agents: int) -> int:
    """Item level: fill one agent at a time with the task best aligned to its room."""
    shares = np.repeat(_shares(workload)[:, :2], workload.instances, axis=0)
    left = np.ones(len(shares), dtype=np.bool_)
    agents = 0
    while left.any():
        agents += 1
        room = np.ones(2)
        while True:
            candidates = np.flatnonzero(left & np.all(shares <= room + 1e-12, axis=1))
            if len(candidates) == 0:
                break
            best = candidates[int(np.argmax(shares[candidates] @ room))]
            left[best] = False
            room = room - shares[best]
    return agents


def _reference(order: str, scorer: ref.Scorer) -> Variant:
    def run(workload: PackingWorkload, n_agents: int) -> int:
        capacity = np.tile(workload.machine, (n_agents, 1))
        apps = (
            np.arange(len(workload.demands), dtype=np.intp)
            if order == "arrival"
            else ref.decreasing_dominant_share(workload.demands, workload.machine)
        )
        return ref.place_task_at_a_time(
            capacity,
            workload.demands,
            workload.instances,
            workload.unique,
            apps,
            scorer,
            workload.fixed_port,
        ).agents_used

    return run


def variants() -> list[tuple[str, str, Variant, float]]:
    """(section, name, variant, balance slack)."""
    slack = scoring.BALANCE_SLACK
    return [
        (
            "reference, task at a time",
            "FFD (dominant share, first fit)",
            _reference("largest", ref.first_fit),
            slack,
        ),
        (
            "reference, task at a time",
            "Nomad BestFit-v3, arrival order",
            _reference("arrival", ref.nomad_bestfit_v3),
            slack,
        ),
        (
            "reference, task at a time",
            "K8s MostAllocated, arrival order",
            _reference("arrival", ref.k8s_most_allocated),
            slack,
        ),
        ("score (largest first, full fill)", "best fit (mean used cpu+mem)", _model(BY_SUM), slack),
        (
            "score (largest first, full fill)",
            "Nomad BestFit-v3",
            _model(BY_SUM, ref.nomad_bestfit_v3),
            slack,
        ),
        (
            "score (largest first, full fill)",
            "K8s MostAllocated",
            _model(BY_SUM, ref.k8s_most_allocated),
            slack,
        ),
        (
            "score (largest first, full fill)",
            "L2 norm of the room left",
            _model(BY_SUM, l2_score),
            slack,
        ),
        (
            "score (largest first, full fill)",
            "best fit - 2 x imbalance",
            _model(BY_SUM, imbalance_score),
            slack,
        ),
        (
            "score (largest first, full fill)",
            "Tetris dot product",
            _model(BY_SUM, dot_score),
            slack,
        ),
        ("order (best fit, full fill)", "submission order", _model(ARRIVAL), slack),
        ("order (best fit, full fill)", "dominant share", _model(BY_MAX), slack),
        ("order (best fit, full fill)", "L2 norm of shares", _model(BY_L2), slack),
        (
            "order (best fit, full fill)",
            "FFDAvgSum (weighted by total demand)",
            _model(BY_AVGSUM),
            slack,
        ),
        ("fill (largest first)", "balanced, slack 0.1", _model(_balanced(BY_SUM)), 0.1),
        ("fill (largest first)", "balanced, slack 0.2", _model(_balanced(BY_SUM)), 0.2),
        ("fill (largest first)", "balanced, slack 0.3", _model(_balanced(BY_SUM)), 0.3),
        (
            "look-ahead order",
            "full fill, group alignment",
            _model(_look_ahead("dotn", False)),
            slack,
        ),
        (
            "look-ahead order",
            "balanced 0.2, one-copy alignment",
            _model(_look_ahead("dot1", True)),
            0.2,
        ),
        (
            "look-ahead order",
            "balanced 0.2, fill + imbalance",
            _model(_look_ahead("fill", True)),
            0.2,
        ),
        (
            "look-ahead order",
            "balanced 0.1, group alignment",
            _model(_look_ahead("dotn", True)),
            0.1,
        ),
        (
            "look-ahead order",
            "balanced 0.2, group alignment",
            _model(_look_ahead("dotn", True)),
            0.2,
        ),
        (
            "look-ahead order",
            "balanced 0.3, group alignment",
            _model(_look_ahead("dotn", True)),
            0.3,
        ),
        (
            "chosen",
            "plan_requests: best of its strategies",
            lambda workload, n_agents: pm.place_groups(workload, n_agents, pm.CHOSEN)[0],
            slack,
        ),
        ("no groups", "item-level bin-centric dot product", bin_centric, slack),
    ]


SMALL_MACHINE = np.array([8.0, 32768.0, 512000.0, 0.0])
"""For the exact check: a quarter of the benchmark machine, so a few dozen tasks fill several."""


def exact_agents(workload: PackingWorkload, upper: int) -> int | None:
    """The fewest agents any packing needs (scipy's MILP, HiGHS); None if not solved in 60 s."""
    from scipy.optimize import (  # type: ignore[import-untyped]  # bench-only dependency
        Bounds,
        LinearConstraint,
        milp,
    )

    shares = np.repeat(_shares(workload)[:, :2], workload.instances, axis=0)
    n_tasks, n_bins = len(shares), upper
    # Variables: x[task, bin] row-major, then y[bin] (bin in use).
    n_x = n_tasks * n_bins
    cost = np.concatenate([np.zeros(n_x), np.ones(n_bins)])
    rows: list[tuple[FloatArray, float, float]] = []  # (coefficients, lower, upper)
    for task in range(n_tasks):  # every task on exactly one bin
        row = np.zeros(n_x + n_bins)
        row[task * n_bins : (task + 1) * n_bins] = 1
        rows.append((row, 1, 1))
    for resource in range(2):  # capacity of used bins
        for b in range(n_bins):
            row = np.zeros(n_x + n_bins)
            row[b:n_x:n_bins] = shares[:, resource]
            row[n_x + b] = -1
            rows.append((row, -np.inf, 0))
    for b in range(n_bins - 1):  # symmetry: use bins in order
        row = np.zeros(n_x + n_bins)
        row[n_x + b], row[n_x + b + 1] = -1, 1
        rows.append((row, -np.inf, 0))
    matrix = np.array([row for row, _, _ in rows])
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, [r[1] for r in rows], [r[2] for r in rows]),
        integrality=np.ones(n_x + n_bins),
        bounds=Bounds(0, 1),
        options={"time_limit": 60},
    )
    if result.status != 0:
        return None
    optimum: int = round(float(result.fun))
    return optimum


def exact_check(seeds: int) -> None:
    print("| seed | tasks | lower bound | exact optimum | FFD | tessera (model) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed in range(seeds):
        workload = generate(seed, 10, machine=SMALL_MACHINE)
        bound = lower_bound(workload)
        n_agents = math.ceil(1.5 * bound) + 2
        ffd = _reference("largest", ref.first_fit)(workload, n_agents)
        ours = pm.place_groups(workload, n_agents, pm.CHOSEN)[0]
        best = exact_agents(workload, min(ffd, ours))
        shown = "timeout" if best is None else str(best)
        print(f"| {seed} | {workload.n_tasks} | {bound} | {shown} | {ffd} | {ours} |", flush=True)


def mean_least_allocated(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Kubernetes' LeastAllocated shape: 1 - the mean used fraction of cpus and mem."""
    return 1.0 - scoring.binpack_scores(free, capacity, demand)


def spread_check(seeds: int, apps: int) -> None:
    """The engine's spread policy with two agent scores, on the packing workloads."""
    from bench import placement  # the engine harness lives there
    from tessera.placement import Policy, Snapshot, Strategy, place

    chosen = scoring.spread_scores
    print("| spread score | highest agent | standard deviation |")
    print("|---|---:|---:|")
    for name, score in (
        ("mean least-allocated", mean_least_allocated),
        ("dominant (chosen)", chosen),
    ):
        peaks, deviations = [], []
        scoring.spread_scores = score
        try:
            for seed in range(seeds):
                workload = generate(seed, apps)
                n_agents = math.ceil(1.5 * lower_bound(workload)) + 2
                snapshot = Snapshot.build(placement._engine_agents(n_agents, workload.machine))
                policy = Policy(strategy=Strategy.SPREAD)
                place(snapshot, placement._engine_requests(workload), policy)
                use = placement._dominant_use(snapshot.free, snapshot.total)
                peaks.append(float(use.max()))
                deviations.append(float(use.std()))
        finally:
            scoring.spread_scores = chosen
        print(f"| {name} | {np.mean(peaks):.3f} | {np.mean(deviations):.3f} |", flush=True)


FAMILIES = {
    "balanced": (0.0, 1.0),
    "cpu-bound": (0.0, 0.75),
    "UNIQUE 30%": (0.3, 1.0),
    "small (150 apps)": (0.0, 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--apps", type=int, default=900)
    parser.add_argument("--exact", type=int, help="instead: exact check on this many seeds")
    parser.add_argument("--spread", action="store_true", help="instead: spread scores")
    args = parser.parse_args()
    if args.spread:
        spread_check(args.seeds, args.apps)
        return
    if args.exact:
        exact_check(args.exact)
        return
    families: dict[str, list[tuple[PackingWorkload, int]]] = {}
    for family, (unique, mem_scale) in FAMILIES.items():
        apps = 150 if family.startswith("small") else args.apps
        workloads = []
        for seed in range(args.seeds):
            base = generate(seed, apps, unique)
            scaled = base.demands * np.array([1.0, mem_scale, 1.0, 1.0])
            workloads.append(
                PackingWorkload(seed, scaled, base.instances, base.unique, base.machine)
            )
        families[family] = [(w, lower_bound(w)) for w in workloads]
    for new in packing_families(args.apps)[2:]:  # new users' batches (host ports, classes)
        drawn = [new.draw(seed) for seed in range(args.seeds)]
        families[new.name] = [(w, lower_bound(w)) for w in drawn]
    print("| section | variant | " + " | ".join(families) + " | s/run |")
    print("|---|---|" + "---:|" * (len(families) + 1))
    for section, name, variant, slack in variants():
        cells = []
        started, runs = time.perf_counter(), 0
        with balance_slack(slack):
            for runs_of_family in families.values():
                gaps = []
                for workload, bound in runs_of_family:
                    used = variant(workload, math.ceil(1.5 * bound) + 2)
                    gaps.append((used - bound) / bound * 100)
                    runs += 1
                cells.append(f"{np.mean(gaps):.1f}% / {np.max(gaps):.1f}%")
        seconds = (time.perf_counter() - started) / runs
        print(f"| {section} | {name} | " + " | ".join(cells) + f" | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
