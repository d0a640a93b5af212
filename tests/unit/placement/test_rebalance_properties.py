"""Property tests of the rebalance planner on random clusters: every wave, replayed start
before kill, keeps resources, ports and constraints; the safety rules hold at every wave."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.model.constraints import Constraint, Operator
from tessera.model.resources import PortRange, Resources
from tessera.placement import AgentDescription, Request, RunningTask, Snapshot, place
from tessera.placement.rebalance import MoveRules, RebalancePlan, plan_rebalance

PORTS = (PortRange(31000, 31003),)


@dataclass(frozen=True)
class World:
    snapshot: Snapshot
    rules: dict[str, MoveRules]
    pinned: frozenset[str]
    max_moves: int | None


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n_agents = draw(st.integers(2, 9))
    sizes = [draw(st.sampled_from([(4, 4096), (8, 8192), (2, 8192)])) for _ in range(n_agents)]
    agents = [
        AgentDescription(
            f"a{i}", f"h{i}", Resources(cpus=c, mem=m, ports=PORTS), {"rack": f"r{i % 3}"}
        )
        for i, (c, m) in enumerate(sizes)
    ]
    requests = []
    for k in range(draw(st.integers(1, 8))):
        constraint = draw(
            st.sampled_from(
                [
                    (),
                    (Constraint("hostname", Operator.UNIQUE),),
                    (Constraint("rack", Operator.MAX_PER, "2"),),
                ]
            )
        )
        ports = draw(st.sampled_from([(), (0,), (31002,)]))
        requests.append(
            Request(
                f"/app{k}",
                draw(st.integers(1, 6)),
                Resources(
                    cpus=draw(st.sampled_from([0.5, 1, 2])),
                    mem=draw(st.sampled_from([256, 1024, 3072])),
                ),
                ports=ports,
                require_ports=ports == (31002,),
                constraints=constraint,
            )
        )
    snapshot = Snapshot.build(agents)
    plan = place(snapshot, requests)
    shape = {r.key: r for r in requests}
    tasks: dict[int, list[RunningTask]] = {}
    kept = draw(
        st.lists(st.booleans(), min_size=len(plan.placements), max_size=len(plan.placements))
    )
    for placement, keep in zip(plan.placements, kept, strict=True):
        if keep:  # churn: the others were scaled away
            request = shape[placement.key]
            task = RunningTask(
                f"{placement.key}.{placement.instance}",
                placement.key,
                request.resources,
                placement.ports,
            )
            tasks.setdefault(snapshot.index[placement.agent_id], []).append(task)
    running = Snapshot.build(
        AgentDescription(a.id, a.hostname, a.resources, a.attributes, tasks=tuple(tasks.get(i, ())))
        for i, a in enumerate(agents)
    )
    counts = Counter(t.app_id for ts in tasks.values() for t in ts)
    rules = {}
    for request in requests:
        if draw(st.integers(0, 5)) == 0:
            continue  # an app without rules: never moves
        rules[request.key] = MoveRules(
            request,
            max(1, counts[request.key]),
            draw(st.sampled_from([1.0, 0.5, 0.0])),
            draw(st.sampled_from([1.0, 0.5, 0.0])),
            movable=draw(st.integers(0, 5)) > 0,
        )
    ids = sorted(t.task_id for ts in tasks.values() for t in ts)
    pinned = frozenset(draw(st.lists(st.sampled_from(ids), max_size=2))) if ids else frozenset()
    max_moves = draw(st.one_of(st.none(), st.integers(0, 6)))
    return World(running, rules, pinned, max_moves)


class Replay:
    """The cluster as the master would see it, wave by wave: copies started, then killed."""

    def __init__(self, world: World) -> None:
        snapshot = world.snapshot
        self.snapshot = snapshot
        self.used = snapshot.total - snapshot.free
        self.ports_free = snapshot.ports.counts.copy()
        self.where: dict[str, int] = {}
        self.task: dict[str, RunningTask] = {}
        self.count: Counter[tuple[str, int]] = Counter()
        for task, row, alive in zip(
            snapshot.tasks.tasks, snapshot.tasks.agent, snapshot.tasks.alive, strict=True
        ):
            if alive:
                self.where[task.task_id], self.task[task.task_id] = row, task
                self.count[task.app_id, row] += 1

    def start(self, task_id: str, target: str, rules: MoveRules) -> None:
        row = self.snapshot.index[target]
        task = self.task[task_id]
        self.used[row] += task.demand()
        assert (self.used[row] <= self.snapshot.total[row] + 1e-9).all(), f"{target} overfull"
        self.ports_free[row] -= len(rules.request.ports)
        assert self.ports_free[row] >= 0, f"{target} out of ports"
        self.count[task.app_id, row] += 1
        self.check_constraints(task.app_id, rules)

    def kill(self, task_id: str, rules: MoveRules) -> None:
        row = self.where[task_id]
        task = self.task[task_id]
        self.used[row] -= task.demand()
        self.ports_free[row] += len(rules.request.ports)
        self.count[task.app_id, row] -= 1

    def check_constraints(self, app_id: str, rules: MoveRules) -> None:
        per_agent = np.array([self.count[app_id, r] for r in range(self.snapshot.n_agents)])
        for constraint in rules.request.constraints:
            if constraint.operator is Operator.UNIQUE:
                assert per_agent.max() <= 1, f"{app_id}: UNIQUE broken"
            if constraint.operator is Operator.MAX_PER:
                racks = self.snapshot.attribute("rack").counts_per_value(per_agent)
                assert racks.max() <= constraint.count, f"{app_id}: MAX_PER broken"
        if rules.request.require_ports:
            assert per_agent.max() <= 1, f"{app_id}: two copies on one required port"


def check(world: World, plan: RebalancePlan) -> None:
    moved = [m.task_id for m in plan.moves]
    assert len(moved) == len(set(moved)), "a task moved twice"
    assert [m for wave in plan.waves for m in wave] == sorted(
        plan.moves, key=lambda m: [m2 for w in plan.waves for m2 in w].index(m)
    )
    assert sorted(moved) == sorted(m.task_id for wave in plan.waves for m in wave)
    if world.max_moves is not None:
        assert len(plan.moves) <= world.max_moves
    for move in plan.moves:
        rules = world.rules.get(move.app_id)
        assert rules is not None and rules.movable, f"{move.app_id} may not move"
        assert move.task_id not in world.pinned
        assert move.source != move.target
    if not plan.moves:
        assert plan.reason
    assert plan.agents_after >= plan.lower_bound or plan.agents_after == plan.agents_before
    assert plan.minimum_moves <= len(plan.moves) or not plan.freed
    replay = Replay(world)
    for wave in plan.waves:
        per_app = Counter(m.app_id for m in wave)
        for app_id, n in per_app.items():
            assert n <= world.rules[app_id].per_wave, f"{app_id}: {n} moves in one wave"
        for move in wave:
            replay.start(move.task_id, move.target, world.rules[move.app_id])
        for move in wave:
            replay.kill(move.task_id, world.rules[move.app_id])
    freed_rows = {world.snapshot.index[a] for a in plan.freed}
    for row in freed_rows:
        assert (replay.used[row] <= 1e-9).all(), "a freed agent still runs something"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_every_wave_is_feasible_and_safe(world: World) -> None:
    plan = plan_rebalance(
        world.snapshot, world.rules, max_moves=world.max_moves, pinned=world.pinned
    )
    check(world, plan)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.integers(1, 3))
def test_small_waves_are_feasible_and_safe(world: World, wave_moves: int) -> None:
    plan = plan_rebalance(
        world.snapshot,
        world.rules,
        max_moves=world.max_moves,
        pinned=world.pinned,
        wave_moves=wave_moves,
    )
    assert all(len(wave) <= wave_moves for wave in plan.waves)
    check(world, plan)
