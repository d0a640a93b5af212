from __future__ import annotations

from tessera.model.protocol import StatusUpdate
from tessera.model.task import Task, TaskSpec, TaskState
from tessera.reconcile.liveness import silent_agents
from tessera.reconcile.task_status import apply_status, mark_unreachable


def _task(state: TaskState) -> Task:
    return Task("t.1", TaskSpec(name="t", cmd="true"), state, 1.0, 1.0, agent_id="a1")


def _update(uuid: str, state: TaskState, code: int | None = None) -> StatusUpdate:
    return StatusUpdate(uuid, "t.1", state, 5.0, exit_code=code)


def test_running_sets_started_at_once() -> None:
    running = apply_status(_task(TaskState.TASK_STAGING), _update("u1", TaskState.TASK_RUNNING), 7)
    assert running is not None
    assert running.state is TaskState.TASK_RUNNING and running.started_at == 7


def test_duplicate_update_is_ignored() -> None:
    running = apply_status(_task(TaskState.TASK_STAGING), _update("u1", TaskState.TASK_RUNNING), 7)
    assert running is not None
    assert apply_status(running, _update("u1", TaskState.TASK_RUNNING), 8) is None


def test_terminal_is_final() -> None:
    done = apply_status(_task(TaskState.TASK_RUNNING), _update("u2", TaskState.TASK_FAILED, 3), 9)
    assert done is not None
    assert done.exit_code == 3 and done.finished_at == 9
    assert apply_status(done, _update("u3", TaskState.TASK_RUNNING), 10) is None


def test_killing_stays_killing_until_terminal() -> None:
    killing = _task(TaskState.TASK_KILLING)
    late = apply_status(killing, _update("u4", TaskState.TASK_RUNNING), 3)
    assert late is not None and late.state is TaskState.TASK_KILLING
    killed = apply_status(killing, _update("u5", TaskState.TASK_KILLED), 3)
    assert killed is not None and killed.state is TaskState.TASK_KILLED


def test_mark_unreachable_only_active() -> None:
    assert mark_unreachable(_task(TaskState.TASK_FINISHED), 1) is None
    marked = mark_unreachable(_task(TaskState.TASK_RUNNING), 1)
    assert marked is not None and marked.state is TaskState.TASK_UNREACHABLE


def test_silent_agents() -> None:
    assert silent_agents({"a": 10.0, "b": 4.0, "c": 5.0}, now=20.0, timeout=15.0) == ["b"]


def test_a_new_spell_unreachable_forgets_an_earlier_give_up() -> None:
    back = _task(TaskState.TASK_RUNNING).with_changes(inactive_since=1.0)
    marked = mark_unreachable(back, 5)
    assert marked is not None and marked.inactive_since is None
    assert Task.from_json(back.to_json()) == back
