"""Agent settings; every field is a `tessera agent` flag and a `TESSERA_<FLAG>` variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tessera.agent.task_users import DEFAULT_FIRST_UID, DEFAULT_UID_COUNT
from tessera.model.resources import Resources


@dataclass(frozen=True, slots=True)
class AgentConfig:
    masters: tuple[str, ...]
    work_dir: Path
    join_token: str  # a tsr1 join token; "" once joined
    resources: Resources
    attributes: Mapping[str, str] = field(default_factory=dict)
    hostname: str = "localhost"
    http_bind: str = "127.0.0.1"
    http_port: int = 0  # 0: any free port, reported to the master at registration
    task_user: str | None = None  # None: each role's tasks run as its own uid (task_users.py)
    task_uid_first: int = DEFAULT_FIRST_UID
    task_uid_count: int = DEFAULT_UID_COUNT
    isolation: str = "auto"
    kill_tasks_on_exit: bool = False
    reconnect_max_delay: float = 5.0
    # Containers (docs/containers.md).
    default_registry: str = "docker.io"
    docker_config: Path | None = None
    insecure_registries: tuple[str, ...] = ()
    image_pull_stall_timeout: float = 60.0
    image_pull_timeout: float = 600.0
    image_store_limit_mib: float | None = None  # None: the size of the work dir's disk
    image_gc_delay: float = 180.0
    image_gc_interval: float = 300.0
    allow_privileged: bool = False
    allowed_host_paths: tuple[str, ...] = ()
    bridge: str = "tessera0"
    bridge_subnet: str = "10.232.0.0/24"
    # Joining (agent/join.py): the CA's pin, or a trusted CA file, checked before joining.
    ca_pin: str | None = None
    ca_file: Path | None = None
