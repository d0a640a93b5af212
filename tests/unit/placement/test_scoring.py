"""Packing scores, the balanced fill and the request order, with plain numbers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tessera.placement import scoring

# Columns: cpus, mem, disk, gpus. No agent has gpus: that column must never produce NaN.
CAPACITY = np.array([[8.0, 32768.0, 1000.0, 0.0], [8.0, 32768.0, 1000.0, 0.0]])


def test_binpack_prefers_the_fuller_agent_after_the_task() -> None:
    free = np.array([[8.0, 32768.0, 1000.0, 0.0], [2.0, 8192.0, 1000.0, 0.0]])
    demand = np.array([1.0, 4096.0, 10.0, 0.0])
    scores = scoring.binpack_scores(free, CAPACITY, demand)
    # Used after: empty agent 1/8 cpus and 4096/32768 mem; the other 7/8 and 28672/32768.
    assert scores.tolist() == [0.125, 0.875]


def test_spread_prefers_the_emptier_agent_after_the_task() -> None:
    free = np.array([[8.0, 32768.0, 1000.0, 0.0], [2.0, 8192.0, 1000.0, 0.0]])
    demand = np.array([1.0, 4096.0, 10.0, 0.0])
    assert scoring.spread_scores(free, CAPACITY, demand).tolist() == [0.875, 0.125]


def test_a_resource_an_agent_lacks_is_left_out_of_its_score() -> None:
    capacity = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    free = capacity.copy()
    demand = np.array([1.0, 0.0, 0.0, 0.0])
    binpack = scoring.binpack_scores(free, capacity, demand)
    spread = scoring.spread_scores(free, capacity, demand)
    assert binpack.tolist() == [0.25, 0.0]
    assert spread.tolist() == [0.75, 1.0]


def test_copy_limits_keep_cpu_and_mem_usage_within_the_slack() -> None:
    capacity = np.array([[10.0, 100.0, 0.0, 0.0]] * 4)
    free = np.array(
        [
            [10.0, 100.0, 0.0, 0.0],  # empty
            [5.0, 100.0, 0.0, 0.0],  # half its cpus used, no mem: gap +0.5
            [10.0, 70.0, 0.0, 0.0],  # 30% of its mem used: gap -0.3
            [10.0, 100.0, 0.0, 0.0],
        ]
    )
    cpu_heavy = np.array([1.0, 3.0, 0.0, 0.0])  # per copy 0.1 cpu, 0.03 mem: drift +0.07
    limits = scoring.binpack_copy_limits(free, capacity, cpu_heavy)
    # Empty: 2 copies reach a gap of 0.14, a third 0.21 > 0.2. Already past: still 1.
    # Mem-heavy agent: copies may pull it to +0.2, i.e. (0.2 + 0.3) / 0.07 = 7.
    assert limits[:3].tolist() == [2, 1, 7]
    balanced = np.array([1.0, 10.0, 0.0, 0.0])
    assert (scoring.binpack_copy_limits(free, capacity, balanced) == scoring.UNLIMITED_COPIES).all()


def test_balanced_fill_caps_the_first_pass_then_places_the_rest() -> None:
    caps = np.array([5, 5, 5], dtype=np.int64)
    limits = np.array([2, 1, 10], dtype=np.int64)
    assert scoring.balanced_fill(caps, limits, 7).tolist() == [2, 1, 4]
    assert scoring.balanced_fill(caps, limits, 12).tolist() == [5, 2, 5]
    assert scoring.balanced_fill(caps, limits, 20).tolist() == [5, 5, 5]


def test_without_agents_the_order_is_largest_share_first() -> None:
    demands = np.array([[1.0, 1024.0, 0.0, 0.0], [4.0, 4096.0, 0.0, 0.0], [2.0, 512.0, 0.0, 0.0]])
    total = np.array([16.0, 65536.0, 0.0, 0.0])
    assert scoring.order_requests(demands, total).tolist() == [1, 2, 0]


def test_requests_that_must_spread_go_first() -> None:
    demands = np.array([[4.0, 4096.0, 0.0, 0.0], [1.0, 1024.0, 0.0, 0.0]])
    capacity = np.array([[8.0, 32768.0, 0.0, 0.0]] * 4)
    plan = scoring.plan_requests(
        demands,
        np.array([2, 3]),
        capacity.copy(),
        capacity,
        max_per_agent=np.array([2, 1]),  # the small one is UNIQUE on hostname
    )
    assert plan.strategy.startswith("look-ahead")
    assert plan.order.tolist() == [1, 0]


def _agents_used(order: list[int], demands: np.ndarray, capacity: np.ndarray) -> int:
    """One task per request, each on its best binpack agent, as the engine does."""
    free = capacity.copy()
    for request in order:
        fits = np.flatnonzero((free >= demands[request] - 1e-9).all(axis=1))
        scores = scoring.binpack_scores(free[fits], capacity[fits], demands[request])
        free[fits[int(np.argmax(scores))]] -= demands[request]
    return int((free < capacity).any(axis=1).sum())


def test_the_plan_packs_where_largest_first_strands_room() -> None:
    # Agents of (10 cpus, 10 mem); 26 cpus in all, so three agents at best.
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 5)
    demands = np.array([[6.0, 1.0], [4.0, 3.0], [4.0, 4.0], [7.0, 6.0], [5.0, 2.0]]) @ np.eye(2, 4)
    largest_first = scoring.order_requests(demands, capacity.sum(axis=0))
    plan = scoring.plan_requests(demands, np.ones(5, dtype=np.int64), capacity.copy(), capacity)
    assert _agents_used(largest_first.tolist(), demands, capacity) == 4
    assert _agents_used(plan.order.tolist(), demands, capacity) == 3
    assert plan.agents_used == 3


def test_the_plan_fills_mixed_groups_balanced() -> None:
    # Groups on agents of (10, 10): 70 cpus and 63 mem in all, so 7 agents at best.
    # Filled to the brim, the memory-heavy groups strand cpus (9 agents); capping the
    # first pass keeps room for the cpu-heavy group.
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 14)
    demands = np.array([[2.0, 2.0], [4.0, 1.0], [2.0, 3.0], [2.0, 3.0]]) @ np.eye(2, 4)
    counts = np.array([6, 6, 6, 11])
    plan = scoring.plan_requests(demands, counts, capacity.copy(), capacity)
    assert plan.balanced
    assert plan.agents_used == 7


def test_identical_requests_skip_the_look_ahead() -> None:
    capacity = np.array([[8.0, 32768.0, 0.0, 0.0]] * 3)
    demands = np.array([[0.5, 256.0, 0.0, 0.0]] * 3)
    plan = scoring.plan_requests(demands, np.array([5, 5, 5]), capacity.copy(), capacity)
    assert plan.strategy == "interchangeable"
    assert plan.order.tolist() == [0, 1, 2]
    assert not plan.balanced


matrices = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 4), elements=st.sampled_from([0.0, 0.25, 1.0, 8.0, 4096.0])),
        arrays(np.float64, (n, 4), elements=st.floats(0, 1)),
    )
)


@settings(max_examples=200, deadline=None)
@given(matrices, arrays(np.float64, 4, elements=st.floats(0, 16)))
def test_scores_are_finite_and_within_zero_and_one(
    agents: tuple[np.ndarray, np.ndarray], demand: np.ndarray
) -> None:
    capacity, used_fraction = agents
    free = capacity * (1 - used_fraction)
    for scores in (
        scoring.binpack_scores(free, capacity, demand),
        scoring.spread_scores(free, capacity, demand),
    ):
        assert scores.shape == (len(capacity),)
        assert np.isfinite(scores).all()
        assert ((scores >= 0) & (scores <= 1)).all()
    limits = scoring.binpack_copy_limits(free, capacity, demand)
    assert (limits >= 1).all()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, (n, 4), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0])),
            arrays(np.int64, n, elements=st.integers(1, 5)),
            arrays(np.int64, n, elements=st.integers(1, 5)),
        )
    ),
    st.integers(0, 5),
)
def test_order_is_always_a_permutation(
    requests: tuple[np.ndarray, np.ndarray, np.ndarray], n_agents: int
) -> None:
    demands, counts, per_agent = requests
    capacity = np.tile(np.array([8.0, 8.0, 0.0, 2.0]), (n_agents, 1))
    expected = list(range(len(demands)))
    plain = scoring.order_requests(demands, capacity.sum(axis=0))
    plan = scoring.plan_requests(demands, counts, capacity.copy(), capacity, per_agent)
    assert sorted(plain.tolist()) == expected
    assert sorted(plan.order.tolist()) == expected
    assert plan.order.dtype == np.intp


def test_the_look_ahead_keeps_tasks_that_require_one_port_apart() -> None:
    capacity = np.array([[8.0, 8192.0, 0.0, 0.0]] * 3)
    demands = np.array([[1.0, 512.0, 0.0, 0.0], [2.0, 512.0, 0.0, 0.0]])
    counts = np.array([1, 1])
    together = scoring.plan_requests(demands, counts, capacity.copy(), capacity)
    assert together.agents_used == 1
    same_port = (np.array([0]), np.array([0]))
    apart = scoring.plan_requests(
        demands,
        counts,
        capacity.copy(),
        capacity,
        exclusive=scoring.Exclusive(same_port, np.zeros((3, 1), dtype=np.bool_)),
    )
    assert apart.agents_used == 2
    # A port already held on an agent keeps both off it: they open two others.
    held = np.zeros((3, 1), dtype=np.bool_)
    held[0] = True
    free = capacity.copy()
    free[0] -= [1.0, 512.0, 0.0, 0.0]  # agent 0 is in use (by what holds the port)
    busy = scoring.plan_requests(
        demands, counts, free, capacity, exclusive=scoring.Exclusive(same_port, held)
    )
    assert busy.agents_used == 3


def test_even_scores_prefer_the_emptiest_agent_in_use_and_empty_agents_last() -> None:
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 3)
    free = capacity - np.array([[8.0, 8.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0], [0.0] * 4])
    scores = scoring.even_scores(free, capacity, np.array([1.0, 1.0, 0.0, 0.0]))
    assert scores[1] > scores[0] > scores[2]
    assert ((scores >= 0) & (scores <= 1)).all()


# Five one-per-agent requests (UNIQUE), 29 cpus on agents of 10: three agents at best.
SPREAD_CPUS = [7.0, 1.0, 2.0, 6.0, 2.0]
SPREAD_COUNTS = [1, 2, 3, 2, 1]


def test_groups_that_must_spread_are_planned_evenly_where_best_fit_opens_more() -> None:
    demands = np.array([[c, c, 0.0, 0.0] for c in SPREAD_CPUS])
    counts = np.array(SPREAD_COUNTS)
    per_agent = np.ones(5, dtype=np.int64)
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 6)
    plan = scoring.plan_requests(demands, counts, capacity.copy(), capacity, per_agent)
    assert plan.fit is scoring.Fit.EVEN
    assert plan.agents_used == 3
    best_fit = scoring._LookAhead(
        capacity.copy(), capacity, demands, counts, per_agent, plan.balanced
    )
    best_fit.replay(plan.order)
    assert best_fit.outcome()[0] > 3


# Agents of (10 cpus, 10 mem): (4, 1) x 2, (1, 3), (1, 8), (6, 6) fit two agents lowest
# first (6+4 cpus with 6+1+3 mem beside 4+1 cpus with 1+8 mem) but no best-fit order does.
FIRST_FIT = (np.array([[4.0, 1.0], [1.0, 3.0], [1.0, 8.0], [6.0, 6.0]]), np.array([2, 1, 1, 1]))


def test_first_fit_decreasing_is_among_the_plans() -> None:
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 4)
    shapes, counts = FIRST_FIT
    plan = scoring.plan_requests(shapes @ np.eye(2, 4), counts, capacity.copy(), capacity)
    assert plan.fit is scoring.Fit.FIRST
    assert plan.agents_used == 2


def test_small_batches_also_try_other_balance_slacks() -> None:
    # Agents of (10, 10): two (6 cpus, 2 mem) and two (4, 3) fit two agents only if no agent
    # takes both copies of one shape, which a slack of 0.1 keeps and 0.2 does not.
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 4)
    demands = np.array([[6.0, 2.0], [4.0, 3.0]]) @ np.eye(2, 4)
    plan = scoring.plan_requests(demands, np.array([2, 2]), capacity.copy(), capacity)
    assert plan.balanced and plan.slack == 0.1
    assert plan.agents_used == 2
    cpu_only = np.array([1.0, 0.0, 0.0, 0.0])  # 0.1 of an agent's cpus apart per copy
    assert (scoring.binpack_copy_limits(capacity, capacity, cpu_only) == 2).all()
    assert (scoring.binpack_copy_limits(capacity, capacity, cpu_only, slack=0.1) == 1).all()


def test_a_soft_cap_holds_in_the_first_pass_and_the_rest_still_fits() -> None:
    capacity = np.array([[10.0, 10.0, 0.0, 0.0]] * 2)
    pair = np.array([[4.0, 4.0, 0.0, 0.0]])

    def outcome(counts: list[int], soft: list[int] | None) -> tuple[int, int]:
        agents = scoring._LookAhead(
            capacity.copy(), capacity, pair, np.array(counts), np.array(counts), False
        )
        agents.soft = None if soft is None else np.array(soft)
        agents.replay(np.array([0]))
        return agents.outcome()

    assert outcome([2], None) == (1, 0)  # both copies on the fullest agent
    assert outcome([2], [1]) == (2, 0)  # one per agent first
    assert outcome([4], [1]) == (2, 0)  # then the rest where there is room
