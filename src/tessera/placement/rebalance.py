"""The rebalance planner ("clear lines"): free whole agents with the fewest moves.

One pure function, `plan_rebalance(snapshot, rules)`: the cluster as it runs now in, a plan
out (which agents to empty, where each of their instances goes, in which waves). No I/O,
no clock, no asyncio; the master executes the plan (drain-like waves, start-before-kill).

How it chooses (after docs/rebalance.md and ../shared/reference/tetris.md §1.4):

1. Candidates are the active agents in use whose every task may move (the app has
   `MoveRules`, is movable, has a per-wave budget; the task is not pinned).
2. They are tried cheapest to empty first: fewest tasks, then least loaded. Emptying one
   places its tasks, largest first, each on the in-use agent it fits tightest (best fit,
   within the engine's replica-spreading level when possible), never on an agent being
   emptied or one that was empty; when one task fits nowhere the agent is left as it was.
3. It stops at the lower bound, at `max_moves`, or when the candidates run out.

Every constraint is checked by the engine's own filters and limits (`moves.Mover`) on a
state holding all old and all new copies, so it holds at every intermediate state; the
moves are then ordered into waves by `waves.schedule_waves`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.model.constraints import Operator
from tessera.placement.moves import Move, Mover, MoveRules, why_immovable
from tessera.placement.snapshot import Snapshot
from tessera.placement.tasks import RunningTask
from tessera.placement.types import EPSILON, FloatArray, IntArray
from tessera.placement.waves import default_wave_moves, schedule_waves

__all__ = [
    "Move",
    "MoveRules",
    "RebalancePlan",
    "lower_bound",
    "plan_rebalance",
    "schedule_waves",
]


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """What a rebalance would do.

    `lower_bound` is a vector bin-packing bound of what runs on the active agents: for
    each resource, the fewest active agents (largest first) whose capacities add up to the
    demand, and the instance count of the largest app with `UNIQUE hostname`; the highest of
    these. No placement of the same tasks uses fewer agents. `minimum_moves` is the fewest
    moves that could free `len(freed)` agents: the tasks of that many emptiable agents with
    the fewest tasks. `blocked` says, per task that cannot move, why (for a drain to show).
    """

    moves: tuple[Move, ...]
    waves: tuple[tuple[Move, ...], ...]
    freed: tuple[str, ...]
    agents_before: int
    agents_after: int
    lower_bound: int
    minimum_moves: int
    reason: str | None = None
    blocked: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "moves": [m.to_json() for m in self.moves],
            "waves": [[m.to_json() for m in wave] for wave in self.waves],
            "freed": list(self.freed),
            "agentsBefore": self.agents_before,
            "agentsAfter": self.agents_after,
            "lowerBound": self.lower_bound,
            "minimumMoves": self.minimum_moves,
            "blocked": dict(self.blocked),
        }
        if self.reason is not None:
            document["reason"] = self.reason
        return document


def _agents_needed(capacities: FloatArray, demand: float) -> int:
    """The fewest agents (largest first) whose capacities add up to `demand`."""
    if demand <= EPSILON:
        return 0
    running = np.cumsum(np.sort(capacities)[::-1])
    reached = np.flatnonzero(running >= demand - EPSILON * max(1.0, demand))
    return int(reached[0]) + 1 if len(reached) else len(capacities)


def lower_bound(
    snapshot: Snapshot, rules: Mapping[str, MoveRules], live: list[int] | None = None
) -> int:
    """See RebalancePlan: max over resources and UNIQUE-hostname apps."""
    live = _live_on_active(snapshot) if live is None else live
    if not live:
        return 0
    demand = np.sum([snapshot.tasks.tasks[i].demand() for i in live], axis=0)
    capacities = snapshot.total[snapshot.active]
    bound = max(_agents_needed(capacities[:, r], float(demand[r])) for r in range(len(demand)))
    per_app: dict[str, int] = {}
    for index in live:
        app_id = snapshot.tasks.tasks[index].app_id
        per_app[app_id] = per_app.get(app_id, 0) + 1
    for app_id, count in per_app.items():
        app_rules = rules.get(app_id)
        if app_rules is not None and any(
            c.operator is Operator.UNIQUE and c.field == "hostname"
            for c in app_rules.request.constraints
        ):
            bound = max(bound, count)
    return bound


def _live_on_active(snapshot: Snapshot) -> list[int]:
    tasks = snapshot.tasks
    return [
        index
        for index, (row, alive) in enumerate(zip(tasks.agent, tasks.alive, strict=True))
        if alive and snapshot.active[row]
    ]


@dataclass
class _Cluster:
    """The running tasks by agent row, and which rows could be emptied at all."""

    by_row: dict[int, list[int]]
    blocked: dict[str, str]
    emptiable: list[int]


def _survey(
    snapshot: Snapshot, rules: Mapping[str, MoveRules], pinned: set[str], live: list[int]
) -> _Cluster:
    by_row: dict[int, list[int]] = {}
    blocked: dict[str, str] = {}
    for index in live:
        task = snapshot.tasks.tasks[index]
        by_row.setdefault(snapshot.tasks.agent[index], []).append(index)
        why = why_immovable(task, rules, pinned)
        if why is not None:
            blocked[task.task_id] = why
    emptiable = [
        row
        for row, indices in by_row.items()
        if not any(snapshot.tasks.tasks[i].task_id in blocked for i in indices)
    ]
    return _Cluster(by_row, blocked, emptiable)


def _load(snapshot: Snapshot, row: int) -> float:
    total = snapshot.total[row]
    used = total - snapshot.free[row]
    shares = np.where(total > 0, used / np.where(total > 0, total, 1.0), 0.0)
    return float(shares.sum())


def _size(task: RunningTask, scale: FloatArray) -> float:
    return float((task.demand() * scale).sum())


@dataclass
class _Progress:
    moves: list[Move] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)


def _try_empty(
    mover: Mover,
    row: int,
    indices: list[int],
    rules: Mapping[str, MoveRules],
    scale: FloatArray,
) -> list[Move] | tuple[str, str]:
    """Plan moves for every task on `row`, or undo them and say which task fits nowhere."""
    snapshot = mover.snapshot
    tasks = sorted(
        (snapshot.tasks.tasks[i] for i in indices), key=lambda t: _size(t, scale), reverse=True
    )
    mover.leaving[row] = True
    added: list[int] = []
    moves: list[Move] = []
    for task in tasks:
        request = rules[task.app_id].request
        rows, why = mover.candidates(task, request, row)
        if why is not None:
            for index in reversed(added):
                mover.remove(index)
            return task.task_id, why
        target = mover.best(task, request, rows)
        added.append(mover.add_copy(target, task, request))
        source, destination = snapshot.agent_ids[row], snapshot.agent_ids[target]
        moves.append(Move(task.app_id, task.task_id, source, destination))
    return moves


def _minimum_moves(counts: IntArray, freed: int) -> int:
    return int(np.sort(counts)[:freed].sum())


def plan_rebalance(
    snapshot: Snapshot,
    rules: Mapping[str, MoveRules],
    *,
    max_moves: int | None = None,
    pinned: Collection[str] = (),
    wave_moves: int | None = None,
    spread: bool = True,
) -> RebalancePlan:
    """Plan which agents to empty and where their instances go; `snapshot` is not changed.

    Tasks whose app has no rules or opted out, pinned tasks and apps without a per-wave
    budget never move; only active agents already in use take moved instances; each task
    moves at most once; at most `max_moves` moves (None: no cap). With `spread`, an app
    of two or more instances that all run on one agent that stays gets one of them moved
    to another agent where one has room (after the agents are freed, within the budget).
    """
    if max_moves is not None and max_moves < 0:
        raise ValueError("max_moves must be >= 0")
    live = _live_on_active(snapshot)
    cluster = _survey(snapshot, rules, set(pinned), live)
    before = len(cluster.by_row)
    bound = lower_bound(snapshot, rules, live)
    counts = np.array([len(cluster.by_row[row]) for row in cluster.emptiable], dtype=np.int64)

    def finish(progress: _Progress, reason: str | None) -> RebalancePlan:
        moves = tuple(progress.moves)
        cap = default_wave_moves(snapshot) if wave_moves is None else wave_moves
        waves = schedule_waves(moves, snapshot, rules, wave_moves=cap) if moves else ()
        blocked = {**cluster.blocked, **progress.stuck}
        return RebalancePlan(
            moves,
            waves,
            tuple(progress.freed),
            before,
            before - len(progress.freed),
            bound,
            _minimum_moves(counts, len(progress.freed)),
            reason,
            blocked,
        )

    progress = _Progress()
    if before <= bound and not (spread and _stacked_apps(snapshot, cluster, rules)):
        return finish(
            progress, f"nothing to gain: {before} agents in use, the lower bound is {bound}"
        )
    if max_moves == 0:
        return finish(progress, "max_moves is 0: nothing may move")
    if not cluster.emptiable:
        return finish(
            progress,
            f"no agent can be emptied: each of the {before} agents in use runs a task that "
            "may not move (see blocked)",
        )
    targets = np.zeros(snapshot.n_agents, dtype=np.bool_)
    targets[list(cluster.by_row)] = True
    mover = Mover(snapshot.copy(), targets & snapshot.active)
    if spread:
        _spread_stacked(mover, cluster, rules, progress, max_moves)
    _empty_agents(mover, rules, cluster, progress, before - bound, max_moves)
    if progress.moves:
        return finish(progress, None)
    if before <= bound:
        return finish(
            progress,
            f"nothing to gain: {before} agents in use, the lower bound is {bound} (and no "
            "app with all its instances on one agent can have one moved elsewhere)",
        )
    return finish(progress, _why_nothing(cluster, progress, max_moves))


def _empty_agents(
    mover: Mover,
    rules: Mapping[str, MoveRules],
    cluster: _Cluster,
    progress: _Progress,
    gain: int,
    max_moves: int | None,
) -> None:
    """Reserve the cheapest agents to empty (up to `gain` and the move budget) so that no
    moved instance lands on an agent that is to be emptied, then empty them in order; an
    agent that cannot be emptied takes work again and the next candidate is reserved."""
    snapshot = mover.snapshot
    queue = deque(
        sorted(cluster.emptiable, key=lambda row: (len(cluster.by_row[row]), _load(snapshot, row)))
    )
    budget = math.inf if max_moves is None else max_moves
    reserved: deque[int] = deque()
    planned = 0  # moves of the reserved agents

    def reserve() -> None:
        nonlocal planned
        while queue and len(progress.freed) + len(reserved) < gain:
            tasks = len(cluster.by_row[queue[0]])
            if len(progress.moves) + planned + tasks > budget:
                queue.clear()  # later agents hold at least as many tasks
                return
            row = queue.popleft()
            if not mover.received[row]:
                reserved.append(row)
                mover.leaving[row] = True
                planned += tasks

    reserve()
    while reserved:
        row = reserved.popleft()
        indices = cluster.by_row[row]
        planned -= len(indices)
        result = _try_empty(mover, row, indices, rules, mover.scale)
        if isinstance(result, tuple):
            task_id, why = result
            progress.stuck[task_id] = why
            mover.leaving[row] = False
            reserve()
            continue
        progress.moves.extend(result)
        progress.freed.append(snapshot.agent_ids[row])
        mover.targets[row] = False


def _stacked_apps(
    snapshot: Snapshot, cluster: _Cluster, rules: Mapping[str, MoveRules]
) -> dict[str, int]:
    """Apps of two or more instances all on one agent, with a task that may move: the row."""
    rows: dict[str, set[int]] = {}
    tasks: dict[str, list[int]] = {}
    for row, indices in cluster.by_row.items():
        for index in indices:
            app_id = snapshot.tasks.tasks[index].app_id
            rows.setdefault(app_id, set()).add(row)
            tasks.setdefault(app_id, []).append(index)
    return {
        app_id: next(iter(on))
        for app_id, on in rows.items()
        if len(on) == 1
        and len(tasks[app_id]) >= 2
        and any(snapshot.tasks.tasks[i].task_id not in cluster.blocked for i in tasks[app_id])
    }


def _spread_stacked(
    mover: Mover,
    cluster: _Cluster,
    rules: Mapping[str, MoveRules],
    progress: _Progress,
    max_moves: int | None,
) -> None:
    """Move one instance of each app stacked on one agent to another agent in use (before
    any agent is emptied, while the holes are there); that agent is then not emptied, so
    no task moves twice."""
    snapshot = mover.snapshot
    for app_id, row in sorted(_stacked_apps(snapshot, cluster, rules).items()):
        if max_moves is not None and len(progress.moves) >= max_moves:
            return
        index = next(
            i
            for i in cluster.by_row[row]
            if snapshot.tasks.tasks[i].app_id == app_id
            and snapshot.tasks.tasks[i].task_id not in cluster.blocked
        )
        task = snapshot.tasks.tasks[index]
        request = rules[app_id].request
        rows, why = mover.candidates(task, request, row)
        rows = rows[rows != row]
        if len(rows) == 0:
            progress.stuck[task.task_id] = why or "no other agent can take it"
            continue
        target = mover.best(task, request, rows)
        mover.add_copy(target, task, request)
        if row in cluster.emptiable:
            cluster.emptiable.remove(row)
        progress.moves.append(
            Move(app_id, task.task_id, snapshot.agent_ids[row], snapshot.agent_ids[target])
        )


def _why_nothing(cluster: _Cluster, progress: _Progress, max_moves: int | None) -> str:
    fewest = min(len(cluster.by_row[row]) for row in cluster.emptiable)
    if max_moves is not None and fewest > max_moves:
        return (
            f"no agent can be emptied within max_moves {max_moves}: the emptiest movable "
            f"agent runs {fewest} tasks"
        )
    return (
        f"no agent can be emptied: on each of the {len(cluster.emptiable)} agents whose tasks "
        "may move, some task fits nowhere else (see blocked)"
    )
