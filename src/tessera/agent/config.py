"""Agent settings; every field is a `tessera agent` flag and a `TESSERA_<FLAG>` variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tessera.model.resources import Resources


@dataclass(frozen=True, slots=True)
class AgentConfig:
    masters: tuple[str, ...]
    work_dir: Path
    join_token: str
    resources: Resources
    attributes: Mapping[str, str] = field(default_factory=dict)
    hostname: str = "localhost"
    http_bind: str = "127.0.0.1"
    http_port: int = 0  # 0: any free port, reported to the master at registration
    task_user: str | None = None
    isolation: str = "auto"
    kill_tasks_on_exit: bool = False
    reconnect_max_delay: float = 5.0
