"""When a schedule fires: a cron expression in a time zone (croniter does the parsing), or a fixed interval.

Cron times are wall-clock times of the schedule's zone. croniter walks them without a zone; each is then placed
in the zone: a time that a daylight-saving change skips (02:30 on the spring-forward night) runs at the same
instant as the hour after it, once, and a time that occurs twice (the fall-back night) runs at its first
occurrence. A run is always strictly later than the one before: two wall times on one instant run once.
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


def zone(name: str | None) -> datetime.tzinfo:
    """The schedule's zone: the named one, else the machine's (TZ, then /etc/localtime), else UTC."""
    import zoneinfo

    if name:
        return zoneinfo.ZoneInfo(name)
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and check_timezone(tz) is None:
        return zoneinfo.ZoneInfo(tz)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.UTC


def next_after(schedule: ScheduleConfig, after: float) -> float:
    """The first time the schedule fires strictly after `after` (seconds since the epoch). ValueError (croniter's
    CroniterBadDateError) for a cron expression that never fires."""
    if schedule.every is not None:
        return after + schedule.every
    assert schedule.cron is not None
    tz = zone(schedule.timezone)
    wall = datetime.datetime.fromtimestamp(after, tz).replace(tzinfo=None)
    times = _croniter()(schedule.cron, wall)
    while True:
        candidate: datetime.datetime = times.get_next(datetime.datetime)
        at = candidate.replace(tzinfo=tz).timestamp()  # fold 0: a skipped time maps forward, a doubled one first
        if at > after:
            return at


def due(schedule: ScheduleConfig, last: float, now: float) -> list[float]:
    """The times the schedule fired at after `last`, up to `now`, oldest first (at most MAX_CATCH_UP, the latest)."""
    if schedule.every is not None:  # (no walk through a long downtime one interval at a time)
        missed = int((now - last) // schedule.every)
        return [last + k * schedule.every for k in range(max(1, missed - MAX_CATCH_UP + 1), missed + 1)]
    times: list[float] = []
    t = next_after(schedule, last)
    while t <= now:
        times.append(t)
        if len(times) > MAX_CATCH_UP:
            del times[0]
        t = next_after(schedule, t)
    return times
