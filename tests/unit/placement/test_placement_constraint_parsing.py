"""Parsing and validating Marathon constraints (tessera.model.constraints)."""

import pytest

from tessera.model.constraints import (
    Constraint,
    ConstraintError,
    Operator,
    parse_constraint,
    parse_constraints,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["hostname", "UNIQUE"], Constraint("hostname", Operator.UNIQUE)),
        (["@hostname", "UNIQUE"], Constraint("hostname", Operator.UNIQUE)),
        (["@zone", "GROUP_BY", "3"], Constraint("zone", Operator.GROUP_BY, "3")),
        (["@region", "CLUSTER", "eu"], Constraint("region", Operator.CLUSTER, "eu")),
        (["rack", "CLUSTER"], Constraint("rack", Operator.CLUSTER)),
        (["rack", "GROUP_BY"], Constraint("rack", Operator.GROUP_BY)),
        (["rack", "LIKE", "r[0-9]"], Constraint("rack", Operator.LIKE, "r[0-9]")),
        (["rack", "UNLIKE", "r1"], Constraint("rack", Operator.UNLIKE, "r1")),
        (["hostname", "MAX_PER", "2"], Constraint("hostname", Operator.MAX_PER, "2")),
        (["hostname", "MAX_PER", 2], Constraint("hostname", Operator.MAX_PER, "2")),
        (["class", "IS", "c1"], Constraint("class", Operator.IS, "c1")),
    ],
)
def test_valid_constraints_are_normalised(raw: list[object], expected: Constraint) -> None:
    assert parse_constraint(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["hostname"], "expected [field, operator]"),
        ("hostname:UNIQUE", "expected [field, operator]"),
        (["", "UNIQUE"], "field must be a non-empty string"),
        (["@rack", "UNIQUE"], "unknown field '@rack'"),
        (["hostname", "SAME"], "unknown operator 'SAME'"),
        (["hostname", "UNIQUE", "x"], "UNIQUE takes no value"),
        (["zone", "GROUP_BY", "two"], "GROUP_BY value must be a whole number"),
        (["hostname", "MAX_PER"], "MAX_PER requires a value"),
        (["hostname", "MAX_PER", "0"], "MAX_PER value must be a whole number >= 1"),
        (["rack", "LIKE"], "LIKE requires a value"),
        (["rack", "LIKE", "r[0-"], "invalid regular expression"),
        (["class", "IS", ""], "IS requires a value"),
        (["class", "IS", ["c1"]], "value must be a string"),
    ],
)
def test_invalid_constraints_say_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(ConstraintError, match=message.replace("[", r"\[")):
        parse_constraint(raw)


def test_list_errors_name_the_index() -> None:
    with pytest.raises(ConstraintError, match=r"constraints/1 \['x', 'NOPE'\]"):
        parse_constraints([["hostname", "UNIQUE"], ["x", "NOPE"]])


def test_round_trip_to_json() -> None:
    raw = [["hostname", "UNIQUE"], ["zone", "GROUP_BY", "2"]]
    assert [c.to_json() for c in parse_constraints(raw)] == raw
