from __future__ import annotations

import pytest

from tessera.model.resources import (
    PortRange,
    ResourceFormatError,
    Resources,
    parse_attributes,
    parse_port_ranges,
    parse_resources,
)


def test_parse_resources_full() -> None:
    parsed = parse_resources("cpus:4;mem:8192;disk:20000;gpus:1;ports:[31000-32000]")
    assert parsed == Resources(4.0, 8192.0, 20000.0, 1, (PortRange(31000, 32000),))


def test_parse_resources_overrides_base() -> None:
    base = Resources(8, 1000, 5, 0, (PortRange(31000, 32000),))
    parsed = parse_resources("mem:512", base=base)
    assert parsed.cpus == 8 and parsed.mem == 512 and parsed.ports == base.ports


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cpus:-1", "cpus must be >= 0"),
        ("cpus:abc", "cpus must be a number"),
        ("bananas:3", "unknown resource 'bananas'"),
        ("cpus", "expected name:value"),
        ("gpus:1.5", "whole number"),
        ("ports:[32000-31000]", "invalid port range"),
        ("ports:[1-10,5-20]", "overlap"),
        ("ports:[x-y]", "cannot parse range"),
    ],
)
def test_parse_resources_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ResourceFormatError, match=fragment):
        parse_resources(text)


def test_port_ranges_sorted_and_counted() -> None:
    ranges = parse_port_ranges("[33000-33009,31000-31004]")
    assert [r.begin for r in ranges] == [31000, 33000]
    assert Resources(ports=ranges).port_count() == 15


def test_attributes() -> None:
    assert parse_attributes("zone:a;rack:r1") == {"zone": "a", "rack": "r1"}
    with pytest.raises(ResourceFormatError):
        parse_attributes("zone")
    with pytest.raises(ResourceFormatError):
        parse_attributes("bad name:x")


def test_json_round_trip() -> None:
    resources = Resources(1.5, 256, 10, 0, (PortRange(1, 2),))
    assert Resources.from_json(resources.to_json()) == resources
