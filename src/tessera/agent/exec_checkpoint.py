"""What the executor writes to disk so a restarted agent can re-adopt its tasks.

Layout, per task, in `<work_dir>/meta/tasks/<task_id>/` (owned by the agent, not the task):
`task.json` (pid, process start time, boot id, cgroups), `exit_status` (written by the task
wrapper when the command ends), `kill_requested` (we started killing it) and `exit.json`
(the final TaskExit, once the executor has cleaned up). The space for `task.json`,
`exit.json` and `exit_status` is reserved when the directory is made, so a disk that fills
up while the task runs cannot keep any of them from being written, and a full disk fails
the launch up front.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tessera.agent.disk import reserve_beyond_end, reserve_file, write_atomic
from tessera.agent.exec_types import TaskExit

_boot_id: str | None = None


def boot_id() -> str:
    """This boot's random ID: a different one means the host rebooted and every task is gone."""
    global _boot_id
    if _boot_id is None:
        try:
            _boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _boot_id = "unknown"
    return _boot_id


def process_start_ticks(pid: int, *, running_only: bool = False) -> int | None:
    """The process' start time in clock ticks since boot (field 22 of /proc/<pid>/stat).

    Together with the boot ID it tells our task from an unrelated process that reused its
    pid. `running_only` treats a zombie (ended, not yet reaped) as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields after the last ')' are fixed.
    fields = stat.rpartition(b")")[2].split()
    if running_only and fields[:1] == [b"Z"]:
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class TaskCheckpoint:
    task_id: str
    pid: int
    start_ticks: int | None
    boot_id: str
    sandbox: str
    cgroups: tuple[str, ...]
    user: str
    mem_mib: float
    kill_grace_seconds: float
    started_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskCheckpoint:
        return cls(
            task_id=str(data["task_id"]),
            pid=int(data["pid"]),
            start_ticks=data.get("start_ticks"),
            boot_id=str(data["boot_id"]),
            sandbox=str(data["sandbox"]),
            cgroups=tuple(data.get("cgroups", ())),
            user=str(data.get("user", "")),
            mem_mib=float(data.get("mem_mib", 0.0)),
            kill_grace_seconds=float(data.get("kill_grace_seconds", 3.0)),
            started_at=float(data.get("started_at", 0.0)),
        )


# Room reserved for each of task.json, exit.json and exit_status (a filesystem block).
_RESERVED_BYTES = 4096


class MetaStore:
    """The per-task checkpoint directories under `<work_dir>/meta/tasks/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def task_dir(self, task_id: str) -> Path:
        return self.root / task_id

    def status_path(self, task_id: str) -> Path:
        return self.root / task_id / "exit_status"

    def create(self, task_id: str) -> None:
        """Make the task's directory with room for its checkpoints; raises FileExistsError
        when it exists, another OSError (ENOSPC) when the room is not there."""
        directory = self.task_dir(task_id)
        os.mkdir(directory, 0o700)
        try:
            reserve_file(directory / "task.json", _RESERVED_BYTES)
            reserve_file(directory / "exit.json", _RESERVED_BYTES)
            self._reserve_status(task_id)
        except OSError:
            self.forget(task_id)
            raise

    def _reserve_status(self, task_id: str) -> None:
        """An empty `exit_status` with a block allocated past its end for the wrapper."""
        descriptor = os.open(self.status_path(task_id), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            reserve_beyond_end(descriptor, 0, _RESERVED_BYTES)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise  # else this filesystem cannot: the status is written as it comes
        finally:
            os.close(descriptor)

    def exists(self, task_id: str) -> bool:
        return self.task_dir(task_id).exists()

    def write_checkpoint(self, checkpoint: TaskCheckpoint) -> None:
        path = self.task_dir(checkpoint.task_id) / "task.json"
        write_atomic(path, json.dumps(checkpoint.to_json()))

    def read_checkpoint(self, task_id: str) -> TaskCheckpoint | None:
        try:
            text = (self.task_dir(task_id) / "task.json").read_text()
            return TaskCheckpoint.from_json(json.loads(text))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_status(self, task_id: str) -> str | None:
        try:
            return self.status_path(task_id).read_text()
        except OSError:
            return None

    def mark_kill(self, task_id: str) -> None:
        (self.task_dir(task_id) / "kill_requested").touch()

    def kill_requested(self, task_id: str) -> bool:
        return (self.task_dir(task_id) / "kill_requested").exists()

    def write_exit(self, task_id: str, result: TaskExit) -> None:
        write_atomic(self.task_dir(task_id) / "exit.json", json.dumps(result.to_json()))

    def read_exit(self, task_id: str) -> TaskExit | None:
        try:
            return TaskExit.from_json(
                json.loads((self.task_dir(task_id) / "exit.json").read_text())
            )
        except (OSError, ValueError, KeyError):
            return None

    def task_ids(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        except FileNotFoundError:
            return []

    def forget(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)
