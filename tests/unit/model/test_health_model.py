"""Marathon healthChecks / readinessChecks / fetch: defaults, validation paths, round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.model.health import (
    FetchUri,
    HealthCheck,
    HealthProtocol,
    HealthSpecError,
    ReadinessCheck,
    fetch_from_uris,
    parse_fetch,
    parse_health_check,
    parse_health_checks,
    parse_readiness_checks,
    port_reference_errors,
)


def paths(error: HealthSpecError) -> list[str]:
    return [e.path for e in error.errors]


def test_http_check_gets_marathons_defaults() -> None:
    (check,) = parse_health_checks([{}])
    assert check == HealthCheck(protocol=HealthProtocol.HTTP, port_index=0)
    assert check.grace_period_seconds == 300
    assert check.interval_seconds == 60
    assert check.timeout_seconds == 20
    assert check.max_consecutive_failures == 3
    assert check.delay_seconds == 15
    assert check.ignore_http1xx is False
    assert check.ip_protocol == "IPv4"


def test_no_checks() -> None:
    assert parse_health_checks(None) == ()
    assert parse_health_checks([]) == ()
    assert parse_readiness_checks(None) == ()
    assert parse_fetch(None) == ()


@pytest.mark.parametrize("protocol", ["MESOS_HTTP", "MESOS_HTTPS", "HTTPS", "TCP", "MESOS_TCP"])
def test_port_checks_default_to_the_first_port(protocol: str) -> None:
    (check,) = parse_health_checks([{"protocol": protocol}])
    assert check.port_index == 0 and check.port is None
    assert check.target_port([31005, 31006]) == 31005


def test_explicit_port_wins() -> None:
    check = parse_health_check({"protocol": "MESOS_TCP", "port": 8080})
    assert check.port == 8080 and check.port_index is None
    assert check.target_port([31000]) == 8080
    assert parse_health_check({"portIndex": 1}).target_port([1, 2]) == 2
    assert parse_health_check({"portIndex": 3}).target_port([1, 2]) is None


def test_command_check() -> None:
    check = parse_health_check(
        {"protocol": "COMMAND", "command": {"value": "test -f ok"}, "portIndex": 0}
    )
    assert check.command == "test -f ok"
    assert check.port_index is None  # ignored, as Marathon does
    assert check.to_json() == {
        "protocol": "COMMAND",
        "command": {"value": "test -f ok"},
        "gracePeriodSeconds": 300,
        "intervalSeconds": 60,
        "timeoutSeconds": 20,
        "maxConsecutiveFailures": 3,
        "delaySeconds": 15,
    }


def test_a_command_without_protocol_is_a_command_check() -> None:
    check = parse_health_check({"command": {"value": "true"}})
    assert check.protocol is HealthProtocol.COMMAND and check.command == "true"


def test_errors_name_every_bad_field() -> None:
    raw: list[Any] = [
        {"protocol": "HTTP", "path": "/ok"},
        {"protocol": "HTTP", "portIndex": -1, "intervalSeconds": "often", "path": "x"},
        {"protocol": "COMMAND"},
        {"protocol": "TCP", "path": "/no"},
        {"protocol": "GOPHER"},
        {"port": 80, "portIndex": 0},
        "not an object",
        {"protocol": "MESOS_HTTP", "ignoreHttp1xx": "yes", "ipProtocol": "IPX"},
        {"protocol": "HTTP", "command": {"value": "true"}},
    ]
    with pytest.raises(HealthSpecError) as caught:
        parse_health_checks(raw, "healthChecks")
    assert paths(caught.value) == [
        "healthChecks/6",
        "healthChecks/1/path",
        "healthChecks/1/portIndex",
        "healthChecks/1/intervalSeconds",
        "healthChecks/2/command",
        "healthChecks/3/path",
        "healthChecks/4/protocol",
        "healthChecks/5",
        "healthChecks/7/ignoreHttp1xx",
        "healthChecks/7/ipProtocol",
        "healthChecks/8/command",
    ]
    details = caught.value.marathon_details()
    assert details[0] == {"path": "/healthChecks/6", "errors": ["must be an object"]}
    assert "healthChecks/1/portIndex" in str(caught.value)


def test_not_a_list() -> None:
    with pytest.raises(HealthSpecError) as caught:
        parse_health_checks({"protocol": "HTTP"}, "app/healthChecks")
    assert paths(caught.value) == ["app/healthChecks"]


def test_negative_and_huge_seconds_are_refused() -> None:
    with pytest.raises(HealthSpecError) as caught:
        parse_health_check({"gracePeriodSeconds": -1, "timeoutSeconds": 2**40}, "hc")
    assert sorted(paths(caught.value)) == ["hc/gracePeriodSeconds", "hc/timeoutSeconds"]


def test_readiness_defaults() -> None:
    (check,) = parse_readiness_checks([{}])
    assert check == ReadinessCheck()
    assert check.to_json() == {
        "name": "readinessCheck",
        "protocol": "HTTP",
        "path": "/",
        "portName": "http-api",
        "intervalSeconds": 30,
        "timeoutSeconds": 10,
        "httpStatusCodesForReady": [200],
        "preserveLastResponse": False,
    }


def test_readiness_rules() -> None:
    with pytest.raises(HealthSpecError) as caught:
        parse_readiness_checks(
            [{"timeoutSeconds": 30, "intervalSeconds": 30, "httpStatusCodesForReady": [99]}]
        )
    assert paths(caught.value) == [
        "readinessChecks/0/timeoutSeconds",
        "readinessChecks/0/httpStatusCodesForReady/0",
    ]
    with pytest.raises(HealthSpecError) as caught:
        parse_readiness_checks([{}, {}])
    assert paths(caught.value) == ["readinessChecks"]
    with pytest.raises(HealthSpecError) as caught:
        parse_readiness_checks([{"portName": "Web", "protocol": "TCP", "path": "x"}])
    assert sorted(paths(caught.value)) == [
        "readinessChecks/0/path",
        "readinessChecks/0/portName",
        "readinessChecks/0/protocol",
    ]


def test_port_references() -> None:
    checks = parse_health_checks(
        [{"portIndex": 1}, {"protocol": "COMMAND", "command": {"value": "x"}}]
    )
    readiness = parse_readiness_checks([{"portName": "web"}])
    assert port_reference_errors(checks, readiness, ["web", None]) == []
    errors = port_reference_errors(checks, readiness, ["api"])
    assert [e.path for e in errors] == ["healthChecks/0/portIndex", "readinessChecks/0/portName"]


def test_fetch_defaults_and_rules() -> None:
    (entry,) = parse_fetch([{"uri": "https://example.com/app.tgz"}])
    assert entry == FetchUri("https://example.com/app.tgz", extract=True, executable=False)
    assert entry.is_archive
    assert not FetchUri("http://h/run.sh").is_archive
    assert FetchUri("http://h/x?y", dest_path="a.zip").is_archive
    with pytest.raises(HealthSpecError) as caught:
        parse_fetch([{}, {"uri": "ftp://x"}, {"uri": "/a", "destPath": "../../etc/passwd"}])
    assert paths(caught.value) == ["fetch/0/uri", "fetch/1/uri", "fetch/2/destPath"]
    assert fetch_from_uris(["file:///tmp/x"]) == (FetchUri("file:///tmp/x"),)


@given(
    st.sampled_from(list(HealthProtocol)),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 10),
    st.booleans(),
)
def test_health_check_round_trips(
    protocol: HealthProtocol, grace: int, interval: int, failures: int, by_index: bool
) -> None:
    raw: dict[str, Any] = {
        "protocol": protocol.value,
        "gracePeriodSeconds": grace,
        "intervalSeconds": interval,
        "maxConsecutiveFailures": failures,
    }
    if protocol is HealthProtocol.COMMAND:
        raw["command"] = {"value": "true"}
    elif by_index:
        raw["portIndex"] = 2
    else:
        raw["port"] = 8080
    check = parse_health_check(raw)
    assert parse_health_check(check.to_json()) == check


def test_readiness_and_fetch_round_trip() -> None:
    check = ReadinessCheck(
        name="r", path="/ready", port_name="web", http_status_codes_for_ready=(200, 204)
    )
    assert parse_readiness_checks([check.to_json()]) == (check,)
    entry = FetchUri("file:///x/y.tar.gz", extract=False, executable=True, dest_path="bin/y")
    assert parse_fetch([entry.to_json()]) == (entry,)
