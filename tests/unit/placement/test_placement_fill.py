"""Group fill with plain numbers: water-filling, value limits, binpack and spread fills."""

import numpy as np

from tessera.placement.fill import clip_to_limit, cut, fill_binpack, fill_spread, water_fill


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_water_fill_raises_the_lowest_first() -> None:
    assert water_fill(ints(0, 2, 5), 4, np.zeros(3)).tolist() == [3, 1, 0]


def test_water_fill_gives_the_extra_units_to_the_preferred() -> None:
    assert water_fill(ints(0, 0, 0), 4, np.array([1.0, 3.0, 2.0])).tolist() == [1, 2, 1]
    assert water_fill(ints(0, 0, 0), 5, np.array([1.0, 3.0, 2.0])).tolist() == [1, 2, 2]


def test_water_fill_of_nothing() -> None:
    assert water_fill(ints(1, 2), 0, np.zeros(2)).tolist() == [0, 0]
    assert water_fill(ints(), 3, np.zeros(0)).tolist() == []


def test_cut_takes_from_the_front() -> None:
    assert cut(ints(3, 3, 3), 7).tolist() == [3, 3, 1]
    assert cut(ints(3, 3, 3), 20).tolist() == [3, 3, 3]


def test_clip_to_limit_serves_better_agents_of_a_value_first() -> None:
    # Agents in preference order, values 0, 1, 0, 1; value 0 may take 4 more, value 1 only 1.
    clipped = clip_to_limit(ints(3, 3, 3, 3), ints(0, 1, 0, 1), ints(4, 1), unique=False)
    assert clipped.tolist() == [3, 1, 1, 0]


def test_clip_to_limit_for_one_agent_per_value() -> None:
    assert clip_to_limit(ints(3, 3), ints(1, 0), ints(2, 0), unique=True).tolist() == [0, 2]


def test_clip_to_limit_excludes_agents_without_the_attribute() -> None:
    assert clip_to_limit(ints(2, 2), ints(-1, 0), ints(5), unique=False).tolist() == [0, 2]


def test_binpack_fills_the_best_agent_first() -> None:
    assert fill_binpack(ints(4, 4, 4), [], 6).tolist() == [4, 2, 0]


def test_binpack_respects_value_limits_and_charges_them() -> None:
    remaining = ints(1, 1)
    limits = [(ints(0, 0, 1), remaining, False)]
    assert fill_binpack(ints(4, 4, 4), limits, 6).tolist() == [1, 0, 1]
    assert remaining.tolist() == [0, 0]


def test_spread_deals_round_robin_in_preference_order() -> None:
    assert fill_spread(ints(5, 5, 5), [], 4).tolist() == [2, 1, 1]
    assert fill_spread(ints(1, 5, 5), [], 7).tolist() == [1, 3, 3]


def test_spread_stops_when_nothing_fits() -> None:
    assert fill_spread(ints(1, 0, 1), [], 5).tolist() == [1, 0, 1]


def test_spread_within_value_limits() -> None:
    limits = [(ints(0, 0, 1, 1), ints(2, 1), False)]
    assert fill_spread(ints(5, 5, 5, 5), limits, 6).tolist() == [1, 1, 1, 0]
