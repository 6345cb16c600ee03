"""When a schedule fires: a cron expression in a time zone (croniter does the parsing), or a fixed interval.

Cron times are wall-clock times of the schedule's zone. croniter walks them without a zone; each is then placed
in the zone, as cron (cronie) does: a time that a daylight-saving change skips (02:30 on the spring-forward
night) runs at the same instant as the hour after it, once. On the fall-back night a time that occurs twice runs
twice if the schedule's hour field is a wildcard or a step (`*/15 * * * *`, `@hourly`: it keeps running by real
time through the repeated hour), and once, at its first occurrence, if the hour is fixed (`30 2 * * *`). A run
is always strictly later than the one before: two wall times on one instant run once.

The runs due after a long downtime are computed from the last MAX_CATCH_UP only (croniter steps back from now
that many times), so the work is bounded whatever the downtime.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from .config import ScheduleConfig

MAX_CATCH_UP = 1000  # runs fired at once for catch_up = "all" after a long downtime


def _croniter() -> Any:
    """croniter, imported when a cron schedule needs it (with its dependencies, over 1 MB of tq-host's memory)."""
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def check_cron(expression: str) -> str | None:
    """Why a cron expression is not valid (None: it is): not one croniter reads, or one that never fires."""
    croniter = _croniter()
    if len(expression.split()) not in (1, 5) or not croniter.is_valid(expression):
        return (f"not a cron expression: {expression!r} (five fields: minute hour day-of-month month day-of-week, "
                "such as \"*/5 * * * *\", or @hourly, @daily, @weekly, @monthly, @yearly)")
    try:  # (croniter looks 50 years ahead: any date that exists comes round within 28)
        croniter(expression, datetime.datetime(2000, 1, 1)).get_next(datetime.datetime)
    except ValueError:  # CroniterBadDateError
        return (f"never fires: {expression!r} names no date that exists (such as the 30th of February or the "
                "31st of April)")
    return None


def check_timezone(name: str) -> str | None:
    import zoneinfo  # (it imports sysconfig and subprocess: only a configuration with schedules needs it)

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (an IANA name such as \"Europe/Berlin\" or \"UTC\")"
    return None


_LOCAL: dict[tuple[str, float, int], datetime.tzinfo] = {}  # the machine's zone, by TZ and /etc/localtime's stat


def zone(name: str | None) -> datetime.tzinfo:
    """The schedule's zone: the named one, else the machine's (TZ, then /etc/localtime), else UTC. The machine's
    is read again only when TZ or /etc/localtime changes (a stat, not a read and parse, per call)."""
    import zoneinfo

    if name:
        return zoneinfo.ZoneInfo(name)  # (ZoneInfo keeps the zones it made)
    tz = os.environ.get("TZ", "").lstrip(":")
    try:
        st = os.stat("/etc/localtime")
        key = (tz, st.st_mtime, st.st_ino)
    except OSError:
        key = (tz, 0.0, 0)
    if (found := _LOCAL.get(key)) is None:
        _LOCAL.clear()
        found = _LOCAL[key] = _local_zone(tz)
    return found


def _local_zone(tz: str) -> datetime.tzinfo:
    import zoneinfo

    if tz and check_timezone(tz) is None:
        return zoneinfo.ZoneInfo(tz)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.UTC


def _repeats(expression: str) -> bool:
    """Whether the schedule runs twice in a repeated (fall-back) hour: its hour field is a wildcard or a step."""
    fields = expression.split()
    return fields[1].startswith("*") if len(fields) == 5 else expression.strip().lower() == "@hourly"


def next_after(schedule: ScheduleConfig, after: float) -> float:
    """The first time the schedule fires strictly after `after` (seconds since the epoch). ValueError (croniter's
    CroniterBadDateError) for a cron expression that never fires."""
    if schedule.every is not None:
        return after + schedule.every
    assert schedule.cron is not None
    tz = zone(schedule.timezone)
    here = datetime.datetime.fromtimestamp(after, tz)
    wall, twice = here.replace(tzinfo=None), _repeats(schedule.cron)
    at = _first(schedule.cron, wall, tz, after, twice)
    if twice and here.fold == 0 and (shift := _repeated(here)):
        # `after` is in the first pass of a repeated hour: the second pass's times come after it too
        at = min(at, _first(schedule.cron, wall - shift, tz, after, twice))
    return at


def _repeated(here: datetime.datetime) -> datetime.timedelta | None:
    """How long the hour that `here` is in repeats on a fall-back night (None: it does not)."""
    first, second = here.replace(fold=0).utcoffset(), here.replace(fold=1).utcoffset()
    return first - second if first is not None and second is not None and first > second else None


_WALKERS: dict[str, Any] = {}  # expression -> its croniter (parsing one costs more than a step of it)


def _walk(expression: str, wall: datetime.datetime) -> Any:
    """The expression's croniter, set to the wall time `wall`."""
    if (times := _WALKERS.get(expression)) is None:
        if len(_WALKERS) >= 64:
            _WALKERS.clear()
        times = _WALKERS[expression] = _croniter()(expression, wall)
    else:
        times.set_current(wall, force=True)
    return times


def _first(expression: str, wall: datetime.datetime, tz: datetime.tzinfo, after: float, twice: bool) -> float:
    """The first instant after `after` of the cron times from the wall time `wall` on."""
    times = _walk(expression, wall)
    while True:
        candidate: datetime.datetime = times.get_next(datetime.datetime)
        first = candidate.replace(tzinfo=tz).timestamp()  # fold 0: a skipped time maps forward, a doubled one first
        if first > after:
            return first
        if twice and (second := candidate.replace(tzinfo=tz, fold=1).timestamp()) > max(first, after):
            return second  # the second pass of a repeated hour


def due(schedule: ScheduleConfig, last: float, now: float) -> tuple[list[float], bool]:
    """The times the schedule fired at after `last`, up to `now`, oldest first: the latest MAX_CATCH_UP at most,
    and whether there were more (how many more is not computed: after a long downtime only the latest are)."""
    if schedule.every is not None:  # (no walk through a long downtime one interval at a time)
        missed = int((now - last) // schedule.every)
        first = max(1, missed - MAX_CATCH_UP + 1)
        return [last + k * schedule.every for k in range(first, missed + 1)], first > 1
    times = _between(schedule, last, now, MAX_CATCH_UP + 1)
    if len(times) <= MAX_CATCH_UP:
        return times, False
    start = _catch_up_start(schedule, now)  # more than the cap: the latest, found back from now
    return _between(schedule, start, now, None)[-MAX_CATCH_UP:], True


def _between(schedule: ScheduleConfig, after: float, until: float, most: int | None) -> list[float]:
    """The times the schedule fires after `after` up to `until`, oldest first, the first `most` of them."""
    times: list[float] = []
    t = next_after(schedule, after)
    while t <= until and (most is None or len(times) < most):
        times.append(t)
        t = next_after(schedule, t)
    return times


def _catch_up_start(schedule: ScheduleConfig, now: float) -> float:
    """A time before which no run is among the latest MAX_CATCH_UP up to `now`: croniter steps back that many
    times from now (in wall time; an hour's margin for a daylight-saving change on the way)."""
    assert schedule.cron is not None
    tz = zone(schedule.timezone)
    times = _walk(schedule.cron, datetime.datetime.fromtimestamp(now, tz).replace(tzinfo=None))
    earliest: datetime.datetime | None = None
    for _ in range(MAX_CATCH_UP + 1):
        earliest = times.get_prev(datetime.datetime)
    assert earliest is not None
    return earliest.replace(tzinfo=tz).timestamp() - 3600.0
