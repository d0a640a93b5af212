"""Published placement policies, re-implemented for side-by-side packing comparisons.

Each reference places one task at a time, as Nomad and the Kubernetes scheduler do:
score every agent the task fits on, take the best (ties: lowest index), repeat. They
score all agents rather than a sample (Nomad's log2(N) candidate limit, Kubernetes'
percentageOfNodesToScore), which can only help them pack. Columns are (cpus, mem,
disk, gpus); every column is checked for fit, but the scores use cpus and mem only,
as the originals do. Nomad's job anti-affinity and Kubernetes' BalancedAllocation are
separate plugins and are left out: the comparison is between the packing scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Scorer = Callable[
    [NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]
]
"""(free, capacity, demand) of the agents the task fits on -> score, higher is better."""

_CPU, _MEM = 0, 1


def _fraction_free_after(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    columns = [_CPU, _MEM]
    cap = capacity[:, columns]
    safe = np.where(cap > 0, cap, 1.0)
    return np.where(cap > 0, (free[:, columns] - demand[columns]) / safe, 0.0)


def nomad_bestfit_v3(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Nomad's ScoreFitBinPack: clamp(20 - (10^freeCpu + 10^freeMem), 0, 18) / 18.

    Free fractions are taken after the task is placed, against the node's capacity, as
    `computeFreePercentage` does with the proposed allocations included; the /18 is
    the `binPackingMaxFitScore` normalisation in scheduler/rank.go.
    """
    free_after = _fraction_free_after(free, capacity, demand)
    total = np.power(10.0, free_after[:, 0]) + np.power(10.0, free_after[:, 1])
    return np.clip(20.0 - total, 0.0, 18.0) / 18.0


def nomad_spread(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Nomad's ScoreFitSpread: clamp((10^freeCpu + 10^freeMem) - 2, 0, 18) / 18."""
    free_after = _fraction_free_after(free, capacity, demand)
    total = np.power(10.0, free_after[:, 0]) + np.power(10.0, free_after[:, 1])
    return np.clip(total - 2.0, 0.0, 18.0) / 18.0


def _k8s_requested_percent(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Per-resource integer score 0..100 of requested (with the new pod) over allocatable."""
    columns = [_CPU, _MEM]
    cap = capacity[:, columns]
    requested = cap - free[:, columns] + demand[columns]
    safe = np.where(cap > 0, cap, 1.0)
    # Kubernetes works in integers: milli-cpus and bytes, then requested * 100 / capacity.
    percent = np.floor(np.where(cap > 0, requested * 100.0 / safe, 0.0))
    return np.clip(percent, 0, 100).astype(np.int64)


def k8s_most_allocated(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Kubernetes NodeResourcesFit MostAllocated, cpu and memory with weight 1 each."""
    percent = _k8s_requested_percent(free, capacity, demand)
    score: NDArray[np.float64] = (percent.sum(axis=1) // 2).astype(np.float64)
    return score


def k8s_least_allocated(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Kubernetes NodeResourcesFit LeastAllocated: mean of (allocatable - requested) %."""
    percent = _k8s_requested_percent(free, capacity, demand)
    score: NDArray[np.float64] = ((100 - percent).sum(axis=1) // 2).astype(np.float64)
    return score


def first_fit(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Constant score: with ties to the lowest index, this is first fit."""
    return np.zeros(free.shape[0])


@dataclass(frozen=True)
class TaskAtATimeResult:
    """Agents used, tasks left unplaced and the final free matrix of one run."""

    agents_used: int
    unplaced: int
    free: NDArray[np.float64]


def place_task_at_a_time(
    capacity: NDArray[np.float64],
    demands: NDArray[np.float64],
    instances: NDArray[np.int64],
    unique: NDArray[np.bool_],
    order: NDArray[np.intp],
    scorer: Scorer,
    fixed_port: NDArray[np.int64] | None = None,
) -> TaskAtATimeResult:
    """Place every task of every app, app by app in `order`, one task at a time.

    `unique[i]` keeps app i to at most one task per agent (Marathon `UNIQUE hostname`);
    `fixed_port[i]` > 0 is a host port every task of app i requires, which one agent can
    give to one task only (dynamic ports are never short here: agents offer 1,001).
    """
    free = capacity.copy()
    unplaced = 0
    port_taken: dict[int, NDArray[np.bool_]] = {}
    for app in order:
        demand = demands[app]
        port = 0 if fixed_port is None else int(fixed_port[app])
        allowed = np.ones(free.shape[0], dtype=bool)
        if port:
            allowed = port_taken.setdefault(port, np.zeros(free.shape[0], dtype=bool))
            allowed = ~allowed
        for _ in range(int(instances[app])):
            fits = allowed & np.all(free >= demand - 1e-9, axis=1)
            candidates = np.flatnonzero(fits)
            if candidates.size == 0:
                unplaced += 1
                continue
            scores = scorer(free[candidates], capacity[candidates], demand)
            agent = candidates[int(np.argmax(scores))]
            free[agent] -= demand
            if unique[app] or port:
                allowed[agent] = False
            if port:
                port_taken[port][agent] = True
    used = int(np.any(free < capacity, axis=1).sum())
    return TaskAtATimeResult(used, unplaced, free)


def decreasing_dominant_share(
    demands: NDArray[np.float64], machine: NDArray[np.float64]
) -> NDArray[np.intp]:
    """App order for first-fit-decreasing: largest share of one machine, in any resource, first."""
    safe = np.where(machine > 0, machine, 1.0)
    share = np.where(machine > 0, demands / safe, 0.0).max(axis=1)
    return np.argsort(-share, kind="stable").astype(np.intp)


REFERENCE_SCORERS: dict[str, Scorer] = {
    "nomad-bestfit-v3": nomad_bestfit_v3,
    "k8s-most-allocated": k8s_most_allocated,
    "k8s-least-allocated": k8s_least_allocated,
}
