"""Platforms in Go's spelling (os/architecture/variant) and the choice of a manifest from an
index: this machine's platform, then image-spec's rule that the first match wins."""

from __future__ import annotations

import platform as _host
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# platform.machine() → (GOARCH, variant). Variants only where Go images carry them.
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
    "loongarch64": ("loong64", None),
}
# An arm64 entry without a variant is v8, as containerd normalises it.
_DEFAULT_VARIANTS = {"arm64": "v8"}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def current(cls) -> Platform:
        machine = _host.machine().lower()
        architecture, variant = _MACHINES.get(machine, (machine, None))
        operating_system = "linux" if sys.platform.startswith("linux") else sys.platform
        return cls(operating_system, architecture, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/arm64/v8` or `linux/amd64`; raises ValueError otherwise."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/architecture[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_descriptor(cls, value: object) -> Platform | None:
        """The `platform` object of an index entry, or None when it has none."""
        if not isinstance(value, Mapping):
            return None
        operating_system = value.get("os")
        architecture = value.get("architecture")
        if not isinstance(operating_system, str) or not isinstance(architecture, str):
            return None
        variant = value.get("variant")
        return cls(operating_system, architecture, variant if isinstance(variant, str) else None)


def _variant(platform: Platform) -> str | None:
    return platform.variant or _DEFAULT_VARIANTS.get(platform.architecture)


def select_manifest(
    entries: Sequence[Mapping[str, Any]], wanted: Platform
) -> Mapping[str, Any] | None:
    """The first entry for `wanted`'s os and architecture with the same variant, else the first
    with no variant at all; None when nothing fits."""
    loose: Mapping[str, Any] | None = None
    for entry in entries:
        offered = Platform.from_descriptor(entry.get("platform"))
        if offered is None:
            continue
        if (offered.os, offered.architecture) != (wanted.os, wanted.architecture):
            continue
        if _variant(offered) == _variant(wanted):
            return entry
        if offered.variant is None and loose is None:
            loose = entry
    return loose


def offered_platforms(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """What an index offers, for the error that none fits (attestations left out)."""
    names: list[str] = []
    for entry in entries:
        offered = Platform.from_descriptor(entry.get("platform"))
        if offered is not None and offered.os != "unknown" and str(offered) not in names:
            names.append(str(offered))
    return names
