"""Packing scores over whole agent columns; the engine masks infeasible agents itself.

Placeholder bodies; the packing research (issue 3 part 2) owns and replaces them.
Column order of every matrix is (cpus, mem, disk, gpus).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def _free_fraction_after(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    # Resources an agent does not have at all count as fully free, so they do not sway the score.
    safe = np.where(capacity > 0, capacity, 1.0)
    fraction = np.where(capacity > 0, (free - demand) / safe, 1.0)
    return np.clip(fraction, 0.0, 1.0)


def binpack_scores(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Best fit: the less normalised room an agent keeps after the task, the higher."""
    remaining = _free_fraction_after(free, capacity, demand)
    return 1.0 - remaining.mean(axis=1)  # type: ignore[no-any-return]


def spread_scores(
    free: NDArray[np.float64], capacity: NDArray[np.float64], demand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Least allocated: the more normalised room an agent keeps after the task, the higher."""
    return _free_fraction_after(free, capacity, demand).mean(axis=1)  # type: ignore[no-any-return]


def order_requests(
    demands: NDArray[np.float64], total_capacity: NDArray[np.float64]
) -> NDArray[np.intp]:
    """Largest dominant share first (first-fit decreasing); stable for equal shares."""
    safe = np.where(total_capacity > 0, total_capacity, 1.0)
    shares = np.where(total_capacity > 0, demands / safe, 0.0)
    dominant = shares.max(axis=1) if shares.size else np.zeros(len(demands))
    return np.argsort(-dominant, kind="stable").astype(np.intp)
