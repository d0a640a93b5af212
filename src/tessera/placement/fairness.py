"""Dominant resource fairness between roles (after Mesos' DRFSorter), and role quotas."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tessera.placement.types import EPSILON, UNLIMITED, FloatArray


class Sorter:
    """Orders roles by weighted dominant share: the role furthest below its fair share first.

    A role's dominant share is its largest allocated fraction of any resource of the cluster,
    divided by its weight. Ties go to the role name, so the order is deterministic.
    """

    def __init__(self, total: FloatArray, weights: Mapping[str, float] | None = None) -> None:
        self._total = np.asarray(total, dtype=np.float64)
        self._weights = dict(weights or {})
        self._allocated: dict[str, FloatArray] = {}

    def add(self, role: str, allocated: FloatArray | None = None) -> None:
        if role not in self._allocated:
            self._allocated[role] = np.zeros_like(self._total)
        if allocated is not None:
            self._allocated[role] = self._allocated[role] + allocated

    def allocated(self, role: str, resources: FloatArray) -> None:
        """Charge (or with negative amounts, refund) resources to a role."""
        self.add(role, np.asarray(resources, dtype=np.float64))

    def share(self, role: str) -> float:
        allocated = self._allocated.get(role)
        return 0.0 if allocated is None else self.share_of(role, allocated)

    def share_of(self, role: str, resources: FloatArray) -> float:
        """The weighted dominant share `resources` would count for in `role`."""
        present = self._total > 0
        if not present.any():
            return 0.0
        dominant = float((resources[present] / self._total[present]).max())
        return dominant / self._weights.get(role, 1.0)

    def sort(self) -> list[str]:
        return sorted(self._allocated, key=lambda role: (self.share(role), role))


def quota_copies(quota: FloatArray, allocated: FloatArray, demand: FloatArray) -> int:
    """How many more tasks of `demand` the role may run within its quota."""
    limited = (demand > 0) & np.isfinite(quota)
    if not limited.any():
        return UNLIMITED
    headroom = np.maximum(quota[limited] - allocated[limited], 0.0)
    return int(np.floor(headroom / demand[limited] + EPSILON).min())
