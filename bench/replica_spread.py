"""Replica spreading: what it costs in agents and what it buys in availability.

    .venv/bin/python -m bench.placement --parts replicas [--seeds 200]

Small clusters drawn at random (seeded): 8-20 apps of 2-6 instances, 0.5/1/1.5 cpus and
0.5/1/4 GiB per instance, on agents of 8 cpus / 32 GiB (the lower bound plus 4 agents). Each
workload is placed in one `place()` call with replica spreading (the default) and without,
and we count the agents used and the apps left with every instance on one agent.
The benchmark's large families are in the `packing` part (spreading on there too).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tessera.model.resources import Resources
from tessera.placement import AgentDescription, Policy, Request, Snapshot, place

AGENT = Resources(cpus=8.0, mem=32768.0)


@dataclass
class SpreadReport:
    workloads: int
    apps: int
    agents: dict[str, int]
    stacked: dict[str, int]
    worse: int


def _workload(seed: int) -> list[Request]:
    rng = random.Random(seed)
    counts = [rng.randint(2, 6) for _ in range(rng.randint(8, 20))]
    return [
        Request(
            f"/app{i}",
            count,
            Resources(cpus=rng.choice([0.5, 1.0, 1.5]), mem=rng.choice([512.0, 1024.0, 4096.0])),
        )
        for i, count in enumerate(counts)
    ]


def _place(requests: list[Request], n_agents: int, policy: Policy) -> tuple[int, int]:
    agents = [AgentDescription(f"a{i}", f"h{i}", AGENT) for i in range(n_agents)]
    plan = place(Snapshot.build(agents), requests, policy)
    hosts: dict[str, set[str]] = {}
    for placement in plan.placements:
        hosts.setdefault(placement.key, set()).add(placement.agent_id)
    stacked = sum(1 for used in hosts.values() if len(used) == 1)
    return len({p.agent_id for p in plan.placements}), stacked


def run_replicas(seeds: int) -> SpreadReport:
    report = SpreadReport(seeds, 0, {"spread": 0, "plain": 0}, {"spread": 0, "plain": 0}, 0)
    for seed in range(seeds):
        requests = _workload(seed)
        report.apps += len(requests)
        cpus = sum(r.count * r.resources.cpus for r in requests)
        mem = sum(r.count * r.resources.mem for r in requests)
        n_agents = max(math.ceil(cpus / AGENT.cpus), math.ceil(mem / AGENT.mem)) + 4
        used = {}
        for name, policy in (("spread", Policy()), ("plain", Policy(spread_replicas=False))):
            agents, stacked = _place(requests, n_agents, policy)
            report.agents[name] += agents
            report.stacked[name] += stacked
            used[name] = agents
        report.worse += used["spread"] > used["plain"]
    return report


def format_replicas(report: SpreadReport) -> str:
    extra = 100 * (report.agents["spread"] - report.agents["plain"]) / report.agents["plain"]
    return "\n".join(
        [
            f"Replica spreading on {report.workloads} small clusters ({report.apps} apps):",
            f"  agents used in total: {report.agents['spread']} spread, "
            f"{report.agents['plain']} without ({extra:+.1f}%; more on "
            f"{report.worse} of {report.workloads} workloads)",
            f"  apps with every instance on one agent: {report.stacked['spread']} spread, "
            f"{report.stacked['plain']} without",
        ]
    )
