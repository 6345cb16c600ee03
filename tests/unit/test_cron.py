"""When schedules fire: cron in a time zone across daylight-saving changes, intervals, and the runs due."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

from tq import cron
from tq.config import ScheduleConfig

BERLIN = ZoneInfo("Europe/Berlin")


def _runs(schedule: ScheduleConfig, start: datetime.datetime, n: int) -> list[str]:
    t, out = start.timestamp(), []
    for _ in range(n):
        t = cron.next_after(schedule, t)
        out.append(datetime.datetime.fromtimestamp(t, BERLIN).strftime("%m-%d %H:%M%z"))
    return out


def test_a_daily_run_in_the_hour_daylight_saving_skips_runs_once_and_in_the_doubled_hour_once() -> None:
    daily = ScheduleConfig("d", "t", cron="30 2 * * *", timezone="Europe/Berlin")
    assert _runs(daily, datetime.datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3) == [
        "03-29 03:30+0200", "03-30 02:30+0200", "03-31 02:30+0200"]  # 02:30 does not exist on the 29th
    assert _runs(daily, datetime.datetime(2026, 10, 24, 12, tzinfo=BERLIN), 3) == [
        "10-25 02:30+0200", "10-26 02:30+0100", "10-27 02:30+0100"]  # 02:30 happens twice on the 25th: once


def test_runs_every_half_hour_through_the_skipped_hour_never_share_an_instant() -> None:
    half = ScheduleConfig("h", "t", cron="*/30 * * * *", timezone="Europe/Berlin")
    assert _runs(half, datetime.datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN), 4) == [
        "03-29 01:30+0100", "03-29 03:00+0200", "03-29 03:30+0200", "03-29 04:00+0200"]


def test_an_interval_counts_from_the_last_run_and_the_runs_due_are_every_one_missed_at_most_the_cap() -> None:
    every = ScheduleConfig("e", "t", every=10.0)
    assert cron.next_after(every, 100.0) == 110.0
    assert cron.due(every, 100.0, 135.0) == [110.0, 120.0, 130.0]
    assert cron.due(every, 100.0, 109.0) == []
    assert len(cron.due(every, 0.0, 10.0 * (cron.MAX_CATCH_UP + 50))) == cron.MAX_CATCH_UP
    hourly = ScheduleConfig("c", "t", cron="@hourly", timezone="UTC")
    start = datetime.datetime(2026, 1, 1, 0, 30, tzinfo=datetime.UTC).timestamp()
    assert [t - start for t in cron.due(hourly, start, start + 3 * 3600)] == [1800.0, 5400.0, 9000.0]


def test_bad_cron_expressions_and_zones_say_what_is_expected() -> None:
    assert cron.check_cron("*/5 * * * *") is None and cron.check_cron("@daily") is None
    assert "five fields" in (cron.check_cron("61 * * * *") or "")
    assert "five fields" in (cron.check_cron("* * * *") or "")
    assert cron.check_timezone("Europe/Berlin") is None
    assert "unknown time zone 'Mars/Olympus'" in (cron.check_timezone("Mars/Olympus") or "")
