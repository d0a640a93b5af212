"""Marathon placement constraints: `[field, operator, value?]`, parsed and validated once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# `@zone` and `@region` are Mesos fault-domain fields; Tessera reports them as attributes.
_FIELD_ALIASES = {"@hostname": "hostname", "@zone": "zone", "@region": "region"}
_FIELD_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConstraintError(ValueError):
    """A constraint that cannot be used; the message names the constraint and what is wrong."""


class Operator(StrEnum):
    UNIQUE = "UNIQUE"
    CLUSTER = "CLUSTER"
    GROUP_BY = "GROUP_BY"
    LIKE = "LIKE"
    UNLIKE = "UNLIKE"
    MAX_PER = "MAX_PER"
    IS = "IS"


@dataclass(frozen=True, slots=True)
class Constraint:
    """One hard placement rule. `field` is `hostname` or an attribute name (no `@`)."""

    field: str
    operator: Operator
    value: str | None = None

    @property
    def count(self) -> int:
        """The number in `MAX_PER n` and `GROUP_BY n` (0 when GROUP_BY has none)."""
        return int(self.value) if self.value else 0

    @property
    def pattern(self) -> re.Pattern[str]:
        """The compiled regex of LIKE / UNLIKE (matched against the whole value)."""
        return re.compile(self.value or "")

    def to_json(self) -> list[str]:
        head = [self.field, self.operator.value]
        return head if self.value is None else [*head, self.value]


def _describe(raw: object) -> str:
    return repr(list(raw)) if isinstance(raw, (list, tuple)) else repr(raw)


def _field(name: object, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConstraintError(f"{where}: field must be a non-empty string")
    if name in _FIELD_ALIASES:
        return _FIELD_ALIASES[name]
    if name.startswith("@") or not _FIELD_RE.match(name):
        raise ConstraintError(
            f"{where}: unknown field {name!r} (use hostname, @hostname, @zone, @region "
            "or an attribute name)"
        )
    return name


def _operator(name: object, where: str) -> Operator:
    try:
        return Operator(str(name))
    except ValueError:
        known = ", ".join(op.value for op in Operator)
        raise ConstraintError(f"{where}: unknown operator {name!r} (known: {known})") from None


def _check_value(operator: Operator, value: str | None, where: str) -> str | None:
    if operator is Operator.UNIQUE:
        if value:
            raise ConstraintError(f"{where}: UNIQUE takes no value")
        return None
    if operator is Operator.CLUSTER:
        return value or None
    if operator is Operator.GROUP_BY:
        if value and not value.isdigit():
            raise ConstraintError(f"{where}: GROUP_BY value must be a whole number of groups")
        return value or None
    if not value:
        raise ConstraintError(f"{where}: {operator.value} requires a value")
    if operator is Operator.MAX_PER and (not value.isdigit() or int(value) < 1):
        raise ConstraintError(f"{where}: MAX_PER value must be a whole number >= 1")
    if operator in (Operator.LIKE, Operator.UNLIKE):
        try:
            re.compile(value)
        except re.error as error:
            raise ConstraintError(f"{where}: invalid regular expression: {error}") from None
    return value


def parse_constraint(raw: object, where: str = "constraint") -> Constraint:
    """Validate one Marathon constraint, e.g. `["hostname", "MAX_PER", "2"]`."""
    where = f"{where} {_describe(raw)}"
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not 2 <= len(raw) <= 3:
        raise ConstraintError(f"{where}: expected [field, operator] or [field, operator, value]")
    field = _field(raw[0], where)
    operator = _operator(raw[1], where)
    value = raw[2] if len(raw) == 3 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is not None and not isinstance(value, str):
        raise ConstraintError(f"{where}: value must be a string")
    return Constraint(field, operator, _check_value(operator, value, where))


def parse_constraints(raw: object, where: str = "constraints") -> tuple[Constraint, ...]:
    """Validate a list of constraints; errors name the index, e.g. `constraints/1`."""
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ConstraintError(f"{where}: expected a list of constraints")
    return tuple(parse_constraint(item, f"{where}/{index}") for index, item in enumerate(raw))
