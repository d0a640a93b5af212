"""Cron expressions in an IANA time zone: validation and the next fire time, right across
daylight-saving changes.

Five fields (minute hour day-of-month month day-of-week, names allowed, day-of-week 0-7 with
0 and 7 Sunday) or a macro (@hourly, @daily, @midnight, @weekly, @monthly, @yearly,
@annually). Like Metronome (cron-utils with `matchDayOfWeekAndDayOfMonth`), a restricted
day-of-month and day-of-week must both match.

Daylight saving, the way Vixie cron handles it:
- a local time that the clocks skip (02:30 when 02:00 jumps to 03:00) fires once, shifted
  by the size of the jump (03:30), unless a real time fires at that instant anyway;
- a local time that happens twice (02:30 when 03:00 goes back to 02:00) fires once, at its
  first occurrence, when the hour field names hours; when the hour field is `*` the job is
  periodic within the day and fires at both, so it keeps its real-time period.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Clock changes are at most a few hours: candidates this far either side of a window are
# enough to find the earliest instant however the offsets moved.
_SLACK = timedelta(hours=3)
# Within this distance a zone never changes its offset twice, so equal offsets at both ends
# of a window mean none changed in between.
_FAST_WINDOW = 7 * 86400.0
_SCAN_LIMIT = 200_000


class CronError(ValueError):
    """An expression or time zone that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Cron:
    expression: str  # as given
    fields: str  # five fields, macros expanded
    hour_wildcard: bool


@functools.lru_cache(maxsize=4096)
def parse_cron(expression: str) -> Cron:
    text = " ".join(expression.split())
    fields = _MACROS.get(text.lower(), text)
    parts = fields.split(" ")
    if len(parts) != 5:
        raise CronError(
            f"'{expression}' is not a valid cron expression: expected 5 fields "
            "(minute hour day-of-month month day-of-week) or a macro such as @daily"
        )
    if not croniter.is_valid(fields):
        raise CronError(f"'{expression}' is not a valid cron expression")
    cron = Cron(expression, fields, hour_wildcard=parts[1] == "*")
    # An expression that never matches (February 31st) is as useless as a malformed one.
    try:
        croniter(cron.fields, datetime(2000, 1, 1), day_or=False).get_next(datetime)
    except (CroniterBadDateError, ValueError, KeyError) as error:
        raise CronError(f"'{expression}' never fires: {error}") from None
    return cron


@functools.lru_cache(maxsize=1024)
def parse_timezone(name: str) -> tzinfo:
    if name in ("UTC", "Etc/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"No time zone found with this id: {name}") from None


def next_run(expression: str, timezone: str, after: float) -> float:
    """The first fire time strictly after `after` (epoch seconds), as epoch seconds."""
    cron = parse_cron(expression)
    zone = parse_timezone(timezone)
    local_after = _local(after, zone)
    first = croniter(cron.fields, local_after, day_or=False).get_next(datetime)
    if zone is UTC:
        return first.replace(tzinfo=UTC).timestamp()
    earliest = min((t for t in _instants(first, zone, cron) if t > after), default=None)
    if earliest is not None and _steady(zone, after, earliest):
        return earliest
    return _scan(cron, zone, after, local_after)


def runs_between(
    expression: str, timezone: str, after: float, until: float, limit: int = 100
) -> tuple[list[float], int]:
    """Fire times in (after, until]: the last `limit` of them, and how many there were."""
    times: list[float] = []
    count = 0
    moment = after
    while True:
        moment = next_run(expression, timezone, moment)
        if moment > until:
            return times, count
        count += 1
        times.append(moment)
        if len(times) > limit:
            del times[0]
        if count >= _SCAN_LIMIT:
            # A master down for months under an every-minute schedule: stop counting.
            return times, count


def _local(moment: float, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(moment, zone).replace(tzinfo=None)


def _steady(zone: tzinfo, start: float, end: float) -> bool:
    """No offset change from `start` (less the slack) to `end` (plus the slack)."""
    if end - start > _FAST_WINDOW:
        return False
    slack = _SLACK.total_seconds()
    before = datetime.fromtimestamp(start - slack, zone).utcoffset()
    after = datetime.fromtimestamp(end + slack, zone).utcoffset()
    return before == after


def _instants(local: datetime, zone: tzinfo, cron: Cron) -> tuple[float, ...]:
    """The instants at which a local wall-clock time fires (none, one or two)."""
    first = local.replace(tzinfo=zone, fold=0).timestamp()
    second = local.replace(tzinfo=zone, fold=1).timestamp()
    if first == second:
        return (first,)
    if _local(first, zone) != local:
        # Skipped by a jump forward: fold=0 reads it with the offset from before the jump,
        # which is the instant the jump's length later.
        return (first,)
    # Happens twice.
    return (first, second) if cron.hour_wildcard else (min(first, second),)


def _scan(cron: Cron, zone: tzinfo, after: float, local_after: datetime) -> float:
    """Walk local candidates around a clock change and keep the earliest instant."""
    candidates = croniter(cron.fields, local_after - _SLACK, day_or=False)
    best: float | None = None
    for _ in range(_SCAN_LIMIT):
        local = candidates.get_next(datetime)
        if best is not None and local > _local(best, zone) + _SLACK:
            return best
        for moment in _instants(local, zone, cron):
            if moment > after and (best is None or moment < best):
                best = moment
    raise CronError(f"'{cron.expression}' has no fire time near {after}")
