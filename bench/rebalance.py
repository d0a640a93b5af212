"""Rebalancer benchmark: seeded churn on ~1,000 agents, then four ways to free agents.

    .venv/bin/python -m bench.rebalance             # 1,000 agents, ~8,000 instances, 3 seeds
    .venv/bin/python -m bench.rebalance --quick     # 60 agents, 1 seed (the smoke test)
    .venv/bin/python -m bench.rebalance --seeds 5 --agents 1000

Each seed: apps (Zipf instance counts up to 40; 0.25-4 cpus, 2-8 GiB per cpu; 20% of the
multi-instance apps `UNIQUE hostname`, 10% `GROUP_BY rack`) are placed by the engine until
about 88% of the binding resource is asked for; churn then deletes apps and scales others
down (20-40% of the instances, seeded), and new apps (10% of the capacity) are placed by
the engine. From that state:

- `none`: no rebalancing;
- `ca-0.5`, `ca-0.7`: Kubernetes cluster-autoscaler / descheduler style: drain an agent
  whose utilisation max(cpu, mem) is below the threshold, one at a time, lowest first, if
  the engine can re-place all its tasks on the other agents in use (a simulation);
- `greedy`: drain the agent with the fewest tasks the same way, until every agent has been
  tried (tetris.md §1.3's baseline);
- `tessera`: `plan_rebalance`.

Reported per policy (medians over seeds): agents in use over the lower bound, moves, moves
against the minimum for the agents freed, planning time, apps of >= 2 instances left on one
agent.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tessera.model.constraints import Constraint, Operator
from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Policy, Request, RunningTask, Snapshot, place
from tessera.placement.rebalance import MoveRules, lower_bound, plan_rebalance

AGENT = Resources(cpus=16.0, mem=65536.0, disk=200000.0)
RACKS = 20
FILL = 0.80
NEW_WORK = 0.10
CPU_SIZES = (0.25, 0.5, 1.0, 2.0, 4.0)
CPU_WEIGHTS = (0.2, 0.3, 0.25, 0.15, 0.1)
GOAL_OVER_BOUND = 0.03
GOAL_MOVE_RATIO = 1.3
GOAL_SECONDS = 5.0


@dataclass(frozen=True)
class App:
    app_id: str
    instances: int
    resources: Resources
    constraints: tuple[Constraint, ...]
    min_health: float

    def request(self, count: int, first: int = 0, agents: frozenset[str] = frozenset()) -> Request:
        return Request(
            self.app_id,
            count,
            self.resources,
            constraints=self.constraints,
            first_instance=first,
            agents=agents,
        )


def _apps(rng: np.random.Generator, prefix: str, cpu_budget: float, mem_budget: float) -> list[App]:
    """Apps until either budget (total cpus or mem asked for) is reached."""
    apps: list[App] = []
    cpus = mem = 0.0
    while cpus < cpu_budget and mem < mem_budget:
        count = int(min(rng.zipf(1.8), 40))
        cpu = float(rng.choice(CPU_SIZES, p=CPU_WEIGHTS))
        per_cpu = float(np.clip(rng.lognormal(math.log(4096), 0.45), 2048, 8192))
        resources = Resources(cpus=cpu, mem=round(cpu * per_cpu / 128) * 128.0)
        constraints: tuple[Constraint, ...] = ()
        draw = rng.random()
        if count >= 2 and draw < 0.2:
            constraints = (Constraint("hostname", Operator.UNIQUE),)
        elif count >= 2 and draw < 0.3:
            constraints = (Constraint("rack", Operator.GROUP_BY),)
        health = float(rng.choice([1.0, 0.5, 0.0], p=[0.6, 0.3, 0.1]))
        apps.append(App(f"/{prefix}{len(apps)}", count, resources, constraints, health))
        cpus += count * resources.cpus
        mem += count * resources.mem
    return apps


def _agents(n: int, tasks: dict[int, list[RunningTask]] | None = None) -> list[AgentDescription]:
    tasks = tasks or {}
    return [
        AgentDescription(
            f"a{i}", f"h{i}", AGENT, {"rack": f"r{i % RACKS}"}, tasks=tuple(tasks.get(i, ()))
        )
        for i in range(n)
    ]


def _running(snapshot: Snapshot) -> dict[int, list[RunningTask]]:
    by_row: dict[int, list[RunningTask]] = {}
    table = snapshot.tasks
    for task, row, alive in zip(table.tasks, table.agent, table.alive, strict=True):
        if alive:
            by_row.setdefault(row, []).append(task)
    return by_row


def _place_new(snapshot: Snapshot, apps: list[App], counts: dict[str, int]) -> None:
    """Place apps with the engine and record their tasks as running."""
    requests = [app.request(counts.get(app.app_id, app.instances)) for app in apps]
    by_key = {app.app_id: app for app in apps}
    plan = place(snapshot, requests)
    for placement in plan.placements:
        app = by_key[placement.key]
        task = RunningTask(f"{app.app_id}.{placement.instance}", app.app_id, app.resources)
        snapshot.tasks.add(snapshot.index[placement.agent_id], task)


@dataclass
class Cluster:
    snapshot: Snapshot
    apps: dict[str, App]


def churned_cluster(seed: int, n_agents: int) -> Cluster:
    """Place, churn (deletes, scale-downs), place new apps; the running state."""
    rng = np.random.default_rng(seed)
    capacity = n_agents * AGENT.cpus, n_agents * AGENT.mem
    apps = _apps(rng, "app", FILL * capacity[0], FILL * capacity[1])
    snapshot = Snapshot.build(_agents(n_agents))
    _place_new(snapshot, apps, {})
    by_app: dict[str, list[RunningTask]] = {}
    for task in snapshot.tasks.tasks:
        by_app.setdefault(task.app_id, []).append(task)
    target = rng.uniform(0.2, 0.4) * len(snapshot.tasks.tasks)
    removed: set[str] = set()
    order = rng.permutation(len(apps))
    for k in order.tolist():
        if len(removed) >= target:
            break
        tasks = by_app.get(apps[k].app_id, [])
        if rng.random() < 0.25:  # delete the app
            drop = tasks
        else:  # scale it down by 30-70%
            drop_count = round(len(tasks) * rng.uniform(0.3, 0.7))
            drop = [tasks[i] for i in rng.choice(len(tasks), drop_count, replace=False)]
        removed.update(task.task_id for task in drop)
    kept = {
        row: [t for t in tasks if t.task_id not in removed]
        for row, tasks in _running(snapshot).items()
    }
    state = Snapshot.build(_agents(n_agents, kept))
    new_apps = _apps(rng, "new", NEW_WORK * capacity[0], NEW_WORK * capacity[1])
    _place_new(state, new_apps, {})
    final = Snapshot.build(_agents(n_agents, _running(state)))
    return Cluster(final, {app.app_id: app for app in [*apps, *new_apps]})


def move_rules(cluster: Cluster) -> dict[str, MoveRules]:
    counts: dict[str, int] = {}
    for task in cluster.snapshot.tasks.tasks:
        counts[task.app_id] = counts.get(task.app_id, 0) + 1
    return {
        app_id: MoveRules(app.request(1), counts[app_id], app.min_health, 1.0)
        for app_id, app in cluster.apps.items()
        if app_id in counts
    }


# ---- the baselines: drain one agent at a time, re-placing its tasks with the engine ---------


def _in_use(snapshot: Snapshot) -> np.ndarray:
    return snapshot.in_use()


def _drain(cluster: Cluster, snapshot: Snapshot, row: int) -> Snapshot | None:
    """The state with agent `row`'s tasks re-placed by the engine on the other agents in
    use, or None when some task does not fit."""
    trial = snapshot.copy()
    indices = [
        i
        for i, (r, a) in enumerate(zip(trial.tasks.agent, trial.tasks.alive, strict=True))
        if a and r == row
    ]
    counts: dict[str, int] = {}
    for index in indices:
        task = trial.evict(index)
        counts[task.app_id] = counts.get(task.app_id, 0) + 1
    in_use = _in_use(trial)
    in_use[row] = False
    allowed = frozenset(trial.agent_ids[r] for r in np.flatnonzero(in_use).tolist())
    requests = [cluster.apps[a].request(c, agents=allowed) for a, c in counts.items()]
    plan = place(trial, requests, Policy())
    if plan.unplaced_count:
        return None
    for placement in plan.placements:
        app = cluster.apps[placement.key]
        moved = RunningTask(f"{app.app_id}.m{len(trial.tasks.tasks)}", app.app_id, app.resources)
        trial.tasks.add(trial.index[placement.agent_id], moved)
    return trial


def _tasks_per_row(snapshot: Snapshot) -> np.ndarray:
    counts = np.zeros(snapshot.n_agents, dtype=np.int64)
    for row, alive in zip(snapshot.tasks.agent, snapshot.tasks.alive, strict=True):
        if alive:
            counts[row] += 1
    return counts


def _utilisation(snapshot: Snapshot) -> np.ndarray:
    used = (snapshot.total - snapshot.free)[:, :2] / snapshot.total[:, :2]
    return used.max(axis=1)  # type: ignore[no-any-return]


def drain_policy(
    cluster: Cluster, key: Callable[[Snapshot], np.ndarray], threshold: float | None
) -> tuple[Snapshot, int]:
    """Drain agents lowest `key` first, one at a time, each tried once; returns the final
    state and the moves (a task moved twice counts twice)."""
    state = cluster.snapshot
    tried: set[int] = set()
    moves = 0
    while True:
        in_use = _in_use(state)
        score = key(state)
        candidates = [
            r
            for r in np.argsort(score, kind="stable").tolist()
            if in_use[r]
            and r not in tried
            and (threshold is None or _utilisation(state)[r] < threshold)
        ]
        if not candidates:
            return state, moves
        row = candidates[0]
        tried.add(row)
        drained = _drain(cluster, state, row)
        if drained is not None:
            moves += int(_tasks_per_row(state)[row])
            state = drained


# ---- measuring ---------------------------------------------------------------------------------


def stacked_apps(snapshot: Snapshot) -> int:
    rows: dict[str, set[int]] = {}
    count: dict[str, int] = {}
    for task, row, alive in zip(
        snapshot.tasks.tasks, snapshot.tasks.agent, snapshot.tasks.alive, strict=True
    ):
        if alive:
            rows.setdefault(task.app_id, set()).add(row)
            count[task.app_id] = count.get(task.app_id, 0) + 1
    return sum(1 for app, on in rows.items() if count[app] >= 2 and len(on) == 1)


@dataclass
class Outcome:
    agents: int
    moves: int
    minimum: int
    seconds: float
    stacked: int


@dataclass
class SeedResult:
    seed: int
    instances: int
    bound: int
    before: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def _minimum(counts: np.ndarray, freed: int) -> int:
    return int(np.sort(counts[counts > 0])[:freed].sum())


def run_seed(seed: int, n_agents: int, policies: Sequence[str]) -> SeedResult:
    cluster = churned_cluster(seed, n_agents)
    snapshot = cluster.snapshot
    rules = move_rules(cluster)
    counts = _tasks_per_row(snapshot)
    before = int((counts > 0).sum())
    result = SeedResult(seed, int(counts.sum()), lower_bound(snapshot, rules), before)
    result.outcomes["none"] = Outcome(before, 0, 0, 0.0, stacked_apps(snapshot))
    baselines = {
        "ca-0.5": (_utilisation, 0.5),
        "ca-0.7": (_utilisation, 0.7),
        "greedy": (_tasks_per_row, None),
    }
    for name in policies:
        started = time.perf_counter()
        if name == "tessera":
            plan = plan_rebalance(snapshot, rules)
            seconds = time.perf_counter() - started
            final = apply_moves(snapshot, plan.moves)
            agents, moves = plan.agents_after, len(plan.moves)
            assert agents == int((_tasks_per_row(final) > 0).sum())
        else:
            key, threshold = baselines[name]
            final, moves = drain_policy(cluster, key, threshold)
            seconds = time.perf_counter() - started
            agents = int((_tasks_per_row(final) > 0).sum())
        freed = before - agents
        result.outcomes[name] = Outcome(
            agents, moves, _minimum(counts, freed), seconds, stacked_apps(final)
        )
    return result


def apply_moves(snapshot: Snapshot, moves: Sequence[object]) -> Snapshot:
    """The state after a plan's moves (old copies gone, new copies on their targets)."""
    state = snapshot.copy()
    live = {
        t.task_id: i
        for i, (t, a) in enumerate(zip(state.tasks.tasks, state.tasks.alive, strict=True))
        if a
    }
    for move in moves:
        task = state.evict(live[move.task_id])  # type: ignore[attr-defined]
        state.add_task(state.index[move.target], task)  # type: ignore[attr-defined]
    return state


POLICIES = ("none", "ca-0.5", "ca-0.7", "greedy", "tessera")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _met(ok: bool) -> str:
    return "met:" if ok else "NOT met:"


def format_report(results: Sequence[SeedResult], n_agents: int) -> str:
    lines = [
        f"Rebalancing after churn: {n_agents} agents, seeds {[r.seed for r in results]}, "
        f"instances {[r.instances for r in results]}, lower bound {[r.bound for r in results]}, "
        f"agents in use after churn {[r.before for r in results]} (medians below)",
        "| policy | agents in use | over the lower bound | moves | agents freed "
        "| moves / minimum for those | planning s | apps on one agent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results[0].outcomes:
        rows = [(r, r.outcomes[name]) for r in results]
        over = [100 * (o.agents / r.bound - 1) for r, o in rows]
        ratio = [o.moves / o.minimum for _, o in rows if o.minimum]
        lines.append(
            f"| {name} | {_median([o.agents for _, o in rows]):.0f} | {_median(over):.1f}% "
            f"| {_median([o.moves for _, o in rows]):.0f} "
            f"| {_median([r.before - o.agents for r, o in rows]):.0f} "
            f"| {(f'{_median(ratio):.2f}' if ratio else '-')} "
            f"| {_median([o.seconds for _, o in rows]):.2f} "
            f"| {_median([o.stacked for _, o in rows]):.0f} |"
        )
    ours = [(r, r.outcomes["tessera"]) for r in results if "tessera" in r.outcomes]
    if ours:
        over = _median([o.agents / r.bound - 1 for r, o in ours])
        ratio = _median([o.moves / o.minimum for _, o in ours if o.minimum] or [0.0])
        seconds = _median([o.seconds for _, o in ours])
        stacked = max(o.stacked for _, o in ours)
        lines.append(
            f"goals: over the bound {over:.1%} ({_met(over <= GOAL_OVER_BOUND)} <= 3%), "
            f"moves/minimum {ratio:.2f} ({_met(ratio <= GOAL_MOVE_RATIO)} <= 1.3), "
            f"plan {seconds:.2f} s ({_met(seconds <= GOAL_SECONDS)} <= 5 s), "
            f"apps on one agent after: {stacked} ({_met(stacked == 0)} 0)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 agents, one seed")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--agents", type=int, default=None)
    parser.add_argument("--policies", default=",".join(POLICIES[1:]))
    args = parser.parse_args(argv)
    n_agents = args.agents or (60 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 3)
    policies = [p for p in args.policies.split(",") if p and p != "none"]
    results = [run_seed(seed, n_agents, policies) for seed in range(seeds)]
    print(format_report(results, n_agents))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
