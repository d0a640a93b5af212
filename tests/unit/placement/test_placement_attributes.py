"""Attribute columns: integer codes, matching once per distinct value, counts per value."""

import numpy as np

from tessera.placement.attributes import MISSING, AttributeColumn


def test_codes_follow_first_appearance_and_missing_is_minus_one() -> None:
    column = AttributeColumn(["a", None, "b", "a"])
    assert column.codes.tolist() == [0, MISSING, 1, 0]
    assert column.values == ["a", "b"]
    assert column.code("b") == 1 and column.code("zzz") == MISSING
    assert not column.unique


def test_unique_when_every_agent_has_its_own_value() -> None:
    assert AttributeColumn(["h1", "h2"]).unique
    assert not AttributeColumn(["h1", None]).unique


def test_matching_tests_each_value_once() -> None:
    seen: list[str] = []

    def predicate(value: str) -> bool:
        seen.append(value)
        return value.startswith("r1")

    column = AttributeColumn(["r1", "r2", "r10", None, "r1"])
    assert column.matching(predicate, missing=True).tolist() == [True, False, True, True, True]
    assert seen == ["r1", "r2", "r10"]


def test_counts_per_value_leave_out_agents_without_the_attribute() -> None:
    column = AttributeColumn(["a", None, "b", "a"])
    assert column.counts_per_value(np.array([1, 5, 2, 3])).tolist() == [4, 2]


def test_an_attribute_no_agent_has() -> None:
    column = AttributeColumn([None, None])
    assert column.n_values == 0
    assert column.matching(lambda v: True, missing=False).tolist() == [False, False]
    assert column.counts_per_value(np.array([1, 1])).tolist() == []
