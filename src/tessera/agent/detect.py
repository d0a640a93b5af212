"""What this machine offers when no `--resources` says otherwise (Mesos' defaults)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from tessera.model.resources import DEFAULT_PORT_RANGE, PortRange, Resources

_MIB = 1024 * 1024


def _leave_for_system(total_mib: float, reserve_mib: float) -> float:
    # Mesos leaves 1 GiB of memory (5 GiB of disk) for the system, or half on a small box.
    return total_mib - reserve_mib if total_mib >= 2 * reserve_mib else total_mib / 2


def detect_resources(work_dir: Path) -> Resources:
    cpus = float(len(os.sched_getaffinity(0)))
    mem = _leave_for_system(psutil.virtual_memory().total / _MIB, 1024)
    work_dir.mkdir(parents=True, exist_ok=True)
    disk = _leave_for_system(psutil.disk_usage(str(work_dir)).total / _MIB, 5 * 1024)
    return Resources(
        cpus=cpus,
        mem=float(int(mem)),
        disk=float(int(disk)),
        gpus=0,
        ports=(PortRange(*DEFAULT_PORT_RANGE),),
    )


def detect_hostname() -> str:
    return socket.gethostname()
