"""Pure rules for folding an agent's status update into the master's task record."""

from __future__ import annotations

from tessera.model.protocol import StatusUpdate
from tessera.model.task import Task, TaskState

# How many applied update UUIDs a task remembers; an agent resends only its latest ones.
_REMEMBERED_UPDATES = 8


def apply_status(task: Task, update: StatusUpdate, now: float) -> Task | None:
    """The task after `update`, or None when the update changes nothing.

    Idempotent: an update seen before (by UUID) is ignored. Terminal states are final, so a
    late or duplicated update can never bring a finished task back to life.
    """
    if update.uuid in task.applied_updates or task.state.terminal:
        return None
    state = update.state
    # A task being killed stays KILLING until the agent reports how it ended.
    if task.state is TaskState.TASK_KILLING and not state.terminal:
        state = TaskState.TASK_KILLING
    remembered = (*task.applied_updates, update.uuid)[-_REMEMBERED_UPDATES:]
    started_at = task.started_at
    if state is TaskState.TASK_RUNNING and started_at is None:
        started_at = now
    # A task the master stopped for a reason of its own (preemption) ends with that reason.
    decided = task.state is TaskState.TASK_KILLING and task.reason is not None
    kept = decided and state in (TaskState.TASK_KILLED, TaskState.TASK_KILLING)
    return task.with_changes(
        state=state,
        reason=update.reason if state.terminal and not kept else task.reason,
        message=task.message if kept else update.message,
        exit_code=update.exit_code if state.terminal else None,
        started_at=started_at,
        finished_at=now if state.terminal else None,
        updated_at=now,
        applied_updates=remembered,
        healthy=update.healthy if update.healthy is not None else task.healthy,
        ready=update.ready if update.ready is not None else task.ready,
        # Sent once, with TASK_RUNNING; later updates (health, the end) keep it.
        ip_addresses=update.ip_addresses or task.ip_addresses,
    )


def mark_unreachable(task: Task, now: float) -> Task | None:
    if not task.state.active or task.state is TaskState.TASK_UNREACHABLE:
        return None
    # A new spell away: whether the task is given up again is decided afresh.
    return task.with_changes(
        state=TaskState.TASK_UNREACHABLE,
        message="agent missed its heartbeats",
        updated_at=now,
        inactive_since=None,
    )


def mark_lost(task: Task, message: str, now: float) -> Task:
    return task.with_changes(
        state=TaskState.TASK_LOST,
        reason="REASON_RECONCILIATION",
        message=message,
        updated_at=now,
        finished_at=now,
    )
