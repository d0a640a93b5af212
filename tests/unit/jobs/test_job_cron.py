"""Cron math: validation, time zones and daylight-saving changes (Berlin and New York)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.reconcile.cron import CronError, next_run, parse_cron, parse_timezone, runs_between

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def _at(local: str, zone: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp()


def _fires(cron: str, zone: str, start_local: str, count: int) -> list[str]:
    moment = _at(start_local, zone)
    seen = []
    for _ in range(count):
        moment = next_run(cron, zone, moment)
        seen.append(datetime.fromtimestamp(moment, ZoneInfo(zone)).isoformat())
    return seen


def test_utc_every_minute_is_strictly_after() -> None:
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC).timestamp()
    assert next_run("* * * * *", "UTC", start) == start + 60
    assert next_run("* * * * *", "UTC", start + 59.5) == start + 60


def test_berlin_spring_forward_shifts_skipped_time_once() -> None:
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    assert _fires("30 2 * * *", BERLIN, "2024-03-30T12:00", 3) == [
        "2024-03-31T03:30:00+02:00",
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]


def test_berlin_fall_back_fixed_time_runs_once() -> None:
    # 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    assert _fires("30 2 * * *", BERLIN, "2024-10-26T12:00", 2) == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_berlin_periodic_job_keeps_real_time_period_across_both_changes() -> None:
    spring = _fires("*/30 * * * *", BERLIN, "2024-03-31T01:00", 3)
    assert spring == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 30 real minutes later
        "2024-03-31T03:30:00+02:00",
    ]
    autumn = _fires("*/30 * * * *", BERLIN, "2024-10-27T01:30", 5)
    assert autumn == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:00:00+01:00",  # the repeated hour runs too: every 30 real minutes
        "2024-10-27T02:30:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
    assert _fires("0 2 * * *", NEW_YORK, "2024-03-09T12:00", 2) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:00:00-04:00",
    ]
    assert _fires("30 1 * * *", NEW_YORK, "2024-11-02T12:00", 2) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    assert _fires("0 * * * *", NEW_YORK, "2024-11-03T00:30", 3) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]


def test_daily_job_in_zone_fires_at_local_midnight_both_sides_of_change() -> None:
    fires = _fires("@daily", NEW_YORK, "2024-03-09T12:00", 2)
    assert fires == ["2024-03-10T00:00:00-05:00", "2024-03-11T00:00:00-04:00"]


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    # Friday the 13th, as Metronome (cron-utils) reads it.
    fires = _fires("0 0 13 * 5", "UTC", "2024-01-01T00:00", 2)
    assert fires == ["2024-09-13T00:00:00+00:00", "2024-12-13T00:00:00+00:00"]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("* * * *", "expected 5 fields"),
        ("0 0 * * * 2030", "expected 5 fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("every day", "expected 5 fields"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_invalid_cron_expressions(expression: str, fragment: str) -> None:
    with pytest.raises(CronError, match=fragment):
        parse_cron(expression)


def test_macros_and_names() -> None:
    assert parse_cron("@hourly").fields == "0 * * * *"
    assert parse_cron("0 9 * JAN-MAR MON-FRI").hour_wildcard is False
    assert parse_cron("*/5 * * * *").hour_wildcard is True


def test_unknown_time_zone() -> None:
    with pytest.raises(CronError, match="No time zone found with this id: Mars/Olympus"):
        parse_timezone("Mars/Olympus")


def test_runs_between_counts_all_and_keeps_the_latest() -> None:
    times, count = runs_between("* * * * *", "UTC", 0.0, 3600.0, limit=3)
    assert count == 60
    assert times == [3480.0, 3540.0, 3600.0]


_ZONES = st.sampled_from(["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata"])
_CRONS = st.sampled_from(["*/7 * * * *", "30 2 * * *", "0 * * * *", "15 1,2,3 * * *", "@daily"])


@settings(max_examples=150, deadline=None)
@given(
    cron=_CRONS,
    zone=_ZONES,
    after=st.floats(min_value=1.6e9, max_value=1.8e9, allow_nan=False),
)
def test_next_run_is_after_and_on_a_matching_local_time(cron: str, zone: str, after: float) -> None:
    moment = next_run(cron, zone, after)
    assert moment > after
    local = datetime.fromtimestamp(moment, parse_timezone(zone))
    assert local.second == 0
    later = next_run(cron, zone, moment)
    assert later > moment
