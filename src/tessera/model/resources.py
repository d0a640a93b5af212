"""Resource vectors and the agent `--resources` / `--attributes` flag formats."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_PORT_RANGE = (31000, 32000)
SCALAR_NAMES = ("cpus", "mem", "disk", "gpus")


class ResourceFormatError(ValueError):
    """A resources or attributes string that cannot be parsed; the message names the part."""


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of host ports, as Mesos writes them: `[31000-32000]`."""

    begin: int
    end: int

    def __post_init__(self) -> None:
        if not (1 <= self.begin <= self.end <= 65535):
            raise ResourceFormatError(f"invalid port range {self.begin}-{self.end}")

    def __len__(self) -> int:
        return self.end - self.begin + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.begin <= port <= self.end


@dataclass(frozen=True, slots=True)
class Resources:
    """A multi-resource vector in Marathon's units: cpus (float), mem and disk (MiB), gpus."""

    cpus: float = 0.0
    mem: float = 0.0
    disk: float = 0.0
    gpus: int = 0
    ports: tuple[PortRange, ...] = field(default_factory=tuple)

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus + other.cpus,
            mem=self.mem + other.mem,
            disk=self.disk + other.disk,
            gpus=self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus - other.cpus,
            mem=self.mem - other.mem,
            disk=self.disk - other.disk,
            gpus=self.gpus - other.gpus,
        )

    def scalars(self) -> dict[str, float]:
        return {"cpus": self.cpus, "mem": self.mem, "disk": self.disk, "gpus": float(self.gpus)}

    def port_count(self) -> int:
        return sum(len(r) for r in self.ports)

    def to_json(self) -> dict[str, object]:
        return {
            "cpus": round(self.cpus, 6),
            "mem": round(self.mem, 3),
            "disk": round(self.disk, 3),
            "gpus": self.gpus,
            "ports": [[r.begin, r.end] for r in self.ports],
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Resources:
        ports = data.get("ports") or []
        assert isinstance(ports, list)
        return Resources(
            cpus=float(data.get("cpus", 0.0)),  # type: ignore[arg-type]
            mem=float(data.get("mem", 0.0)),  # type: ignore[arg-type]
            disk=float(data.get("disk", 0.0)),  # type: ignore[arg-type]
            gpus=int(data.get("gpus", 0)),  # type: ignore[call-overload]
            ports=tuple(PortRange(int(b), int(e)) for b, e in ports),
        )


_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_port_ranges(text: str) -> tuple[PortRange, ...]:
    """Parse `[31000-32000,33000-33100]` (brackets optional) into sorted, disjoint ranges."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    ranges: list[PortRange] = []
    for part in body.split(","):
        if not part.strip():
            continue
        match = _RANGE_RE.match(part)
        if match is None:
            raise ResourceFormatError(f"ports: cannot parse range {part.strip()!r}")
        ranges.append(PortRange(int(match.group(1)), int(match.group(2))))
    ranges.sort(key=lambda r: r.begin)
    for before, after in itertools.pairwise(ranges):
        if after.begin <= before.end:
            raise ResourceFormatError(
                f"ports: ranges {before.begin}-{before.end} and {after.begin}-{after.end} overlap"
            )
    return tuple(ranges)


def _pairs(text: str, what: str) -> Iterable[tuple[str, str]]:
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise ResourceFormatError(f"{what}: expected name:value, got {part.strip()!r}")
        yield name.strip(), value.strip()


def parse_resources(text: str, base: Resources | None = None) -> Resources:
    """Parse Mesos' `cpus:4;mem:8192;disk:20000;ports:[31000-32000]`, overriding `base`."""
    values: dict[str, object] = {}
    if base is not None:
        values = {
            "cpus": base.cpus,
            "mem": base.mem,
            "disk": base.disk,
            "gpus": base.gpus,
            "ports": base.ports,
        }
    for name, value in _pairs(text, "resources"):
        if name == "ports":
            values["ports"] = parse_port_ranges(value)
            continue
        if name not in SCALAR_NAMES:
            raise ResourceFormatError(
                f"resources: unknown resource {name!r} (known: {', '.join(SCALAR_NAMES)}, ports)"
            )
        try:
            number = float(value)
        except ValueError:
            raise ResourceFormatError(
                f"resources: {name} must be a number, got {value!r}"
            ) from None
        if number < 0 or number != number:
            raise ResourceFormatError(f"resources: {name} must be >= 0, got {value!r}")
        if name == "gpus":
            if number != int(number):
                raise ResourceFormatError(f"resources: gpus must be a whole number, got {value!r}")
            values[name] = int(number)
        else:
            values[name] = number
    return Resources(
        cpus=float(values.get("cpus", 0.0)),  # type: ignore[arg-type]
        mem=float(values.get("mem", 0.0)),  # type: ignore[arg-type]
        disk=float(values.get("disk", 0.0)),  # type: ignore[arg-type]
        gpus=int(values.get("gpus", 0)),  # type: ignore[call-overload]
        ports=values.get("ports", ()),  # type: ignore[arg-type]
    )


_ATTR_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_attributes(text: str) -> dict[str, str]:
    """Parse `zone:a;rack:r1` into a mapping; names are letters, digits, `_`, `.`, `-`."""
    attributes: dict[str, str] = {}
    for name, value in _pairs(text, "attributes"):
        if not _ATTR_NAME_RE.match(name):
            raise ResourceFormatError(f"attributes: invalid attribute name {name!r}")
        attributes[name] = value
    return attributes
