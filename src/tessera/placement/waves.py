"""Order moves into waves that the master runs like rolling upgrades, one after another.

A wave starts every move's new copy, waits for it to be healthy, then kills the old copy.
Within a wave an app moves at most surge + slack instances (`MoveRules.per_wave`), and the
whole wave at most `wave_moves`. A move's target must have room for the new copy in the
state the wave starts from plus the copies this wave already starts: room that earlier
waves freed counts, room this wave is still freeing does not. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tessera.placement.moves import Move, MoveRules
from tessera.placement.snapshot import Snapshot
from tessera.placement.tasks import RunningTask
from tessera.placement.types import EPSILON

WAVE_SHARE = 0.05
"""Default cap of one wave: this share of the running instances (at least one move)."""


def default_wave_moves(snapshot: Snapshot) -> int:
    running = sum(snapshot.tasks.alive)
    return max(1, math.ceil(WAVE_SHARE * running))


def _live_tasks(snapshot: Snapshot) -> dict[str, int]:
    tasks = snapshot.tasks
    return {
        task.task_id: index
        for index, (task, alive) in enumerate(zip(tasks.tasks, tasks.alive, strict=True))
        if alive
    }


def _fits(snapshot: Snapshot, row: int, task: RunningTask, rules: MoveRules) -> bool:
    if (snapshot.free[row] + EPSILON < task.demand()).any():
        return False
    request = rules.request
    if not request.ports:
        return True
    if int(snapshot.ports.counts[row]) < len(request.ports):
        return False
    fixed = request.fixed_ports
    return not fixed or bool(snapshot.ports.all_free(fixed)[row])


def _start_copy(snapshot: Snapshot, row: int, task: RunningTask, rules: MoveRules) -> None:
    request = rules.request
    ports: list[int] = []
    if request.ports:
        ports = snapshot.ports.take(row, request.fixed_ports, request.dynamic_ports)
        ports += list(request.fixed_ports)
    snapshot.add_task(row, RunningTask(task.task_id, task.app_id, task.resources, tuple(ports)))


def _checked(
    moves: Sequence[Move], snapshot: Snapshot, rules: Mapping[str, MoveRules]
) -> dict[str, int]:
    live = _live_tasks(snapshot)
    seen: set[str] = set()
    for move in moves:
        if move.task_id in seen:
            raise ValueError(f"task {move.task_id} moves twice")
        seen.add(move.task_id)
        index = live.get(move.task_id)
        if index is None:
            raise ValueError(f"task {move.task_id} is not running")
        if snapshot.agent_ids[snapshot.tasks.agent[index]] != move.source:
            raise ValueError(f"task {move.task_id} does not run on {move.source}")
        if move.target not in snapshot.index:
            raise ValueError(f"move of {move.task_id}: unknown agent {move.target}")
        app_rules = rules.get(move.app_id)
        if app_rules is None or app_rules.per_wave == 0:
            raise ValueError(f"app {move.app_id} may not move (no rules or no budget)")
    return live


def schedule_waves(
    moves: Sequence[Move],
    snapshot: Snapshot,
    rules: Mapping[str, MoveRules],
    *,
    wave_moves: int | None = None,
) -> tuple[tuple[Move, ...], ...]:
    """The moves in waves, in their given order as far as the budgets allow.

    Raises ValueError when a move is malformed (a task moved twice, not running on its
    source, an app without budget) or can never get room on its target.
    """
    live = _checked(moves, snapshot, rules)
    cap = default_wave_moves(snapshot) if wave_moves is None else wave_moves
    if cap < 1:
        raise ValueError("wave_moves must be >= 1")
    state = snapshot.copy()
    pending = list(moves)
    waves: list[tuple[Move, ...]] = []
    while pending:
        wave, rest = _one_wave(pending, state, rules, live, cap)
        if not wave:
            stuck = pending[0]
            raise ValueError(
                f"move of {stuck.task_id} to {stuck.target}: the target never has room"
            )
        for move in wave:  # the wave ends: old copies are killed, their room is free
            state.evict(live[move.task_id])
        waves.append(tuple(wave))
        pending = rest
    return tuple(waves)


def _one_wave(
    pending: list[Move],
    state: Snapshot,
    rules: Mapping[str, MoveRules],
    live: Mapping[str, int],
    cap: int,
) -> tuple[list[Move], list[Move]]:
    wave: list[Move] = []
    rest: list[Move] = []
    per_app: dict[str, int] = {}
    for move in pending:
        app_rules = rules[move.app_id]
        task = state.tasks.tasks[live[move.task_id]]
        row = state.index[move.target]
        if (
            len(wave) < cap
            and per_app.get(move.app_id, 0) < app_rules.per_wave
            and bool(state.active[row])
            and _fits(state, row, task, app_rules)
        ):
            _start_copy(state, row, task, app_rules)
            per_app[move.app_id] = per_app.get(move.app_id, 0) + 1
            wave.append(move)
        else:
            rest.append(move)
    return wave, rest
