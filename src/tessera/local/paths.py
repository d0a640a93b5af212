"""Where a local cluster keeps its files, and how the CLI finds the one that is running."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

STATE_FILE = "cluster.json"


def tessera_home() -> Path:
    return Path(os.environ.get("TESSERA_HOME", Path.home() / ".tessera"))


def default_work_dir() -> Path:
    return tessera_home() / "local"


def current_pointer() -> Path:
    """Holds the work dir of the local cluster started last, wherever it lives."""
    return tessera_home() / "current-cluster"


def read_cluster_state(work_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((work_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def local_clusters() -> list[tuple[Path, str]]:
    """(work dir, master URL) of the local clusters to look at: the one started last (the
    `current-cluster` pointer), then the default work dir."""
    candidates = [default_work_dir()]
    with contextlib.suppress(OSError):
        candidates.insert(0, Path(current_pointer().read_text().strip()))
    found = []
    for work_dir in candidates:
        state = read_cluster_state(work_dir)
        if state and isinstance(state.get("master_url"), str):
            found.append((work_dir, str(state["master_url"])))
    return found


def running_cluster_url() -> str | None:
    clusters = local_clusters()
    return clusters[0][1] if clusters else None


def local_cluster_dir(url: str) -> Path | None:
    """The work dir of the local cluster (`tessera up`) serving `url`, if one does."""
    for work_dir, master_url in local_clusters():
        if master_url.rstrip("/") == url.rstrip("/"):
            return work_dir
    return None
