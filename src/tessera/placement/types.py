"""Shared type aliases and names for the placement engine."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]

RESOURCE_NAMES: Final = ("cpus", "mem", "disk", "gpus")
"""Column order of every resource matrix: free, total, demand, quota."""
N_RESOURCES: Final = len(RESOURCE_NAMES)

UNLIMITED: Final = 1 << 40
"""Copies an agent can host when a filter does not limit them (larger than any count)."""

EPSILON: Final = 1e-9
"""Slack for float resource arithmetic (0.3 / 0.1 must fit three tasks)."""


class Reason(StrEnum):
    """Why an agent rejected a task; the names of Marathon's `processedOffersSummary`."""

    AGENT_UNAVAILABLE = "AgentUnavailable"
    UNFULFILLED_ROLE = "UnfulfilledRole"
    UNFULFILLED_CONSTRAINT = "UnfulfilledConstraint"
    INSUFFICIENT_CPUS = "InsufficientCpus"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    INSUFFICIENT_DISK = "InsufficientDisk"
    INSUFFICIENT_GPUS = "InsufficientGpus"
    INSUFFICIENT_PORTS = "InsufficientPorts"
    QUOTA_EXCEEDED = "QuotaExceeded"
    UNSUPPORTED_CONTAINER_RUNTIME = "UnsupportedContainerRuntime"


RESOURCE_REASONS: Final = (
    Reason.INSUFFICIENT_CPUS,
    Reason.INSUFFICIENT_MEMORY,
    Reason.INSUFFICIENT_DISK,
    Reason.INSUFFICIENT_GPUS,
)
