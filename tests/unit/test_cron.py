"""When schedules fire: cron in a time zone across daylight-saving changes, intervals, and the runs due."""

from __future__ import annotations

import datetime
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest

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


def test_in_the_repeated_hour_a_wildcard_hour_keeps_running_by_real_time_and_a_fixed_hour_runs_once() -> None:
    """Trial E's finding 6: `*/15 * * * *` in Europe/Berlin was silent for 75 minutes on the fall-back night.
    cronie's rule: a wildcard (or step) hour runs through both passes of the repeated hour, a fixed one once."""
    quarter = ScheduleConfig("q", "t", cron="*/15 * * * *", timezone="Europe/Berlin")
    start = datetime.datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN)
    assert _runs(quarter, start, 11) == [
        "10-25 01:45+0200", "10-25 02:00+0200", "10-25 02:15+0200", "10-25 02:30+0200", "10-25 02:45+0200",
        "10-25 02:00+0100", "10-25 02:15+0100", "10-25 02:30+0100", "10-25 02:45+0100", "10-25 03:00+0100",
        "10-25 03:15+0100"]
    runs, more = cron.due(quarter, start.timestamp(), datetime.datetime(2026, 10, 25, 3, 0, tzinfo=BERLIN).timestamp())
    assert len(runs) == 10 and runs == sorted(set(runs)) and not more
    assert [b - a for a, b in itertools.pairwise(runs)] == [900.0] * 9  # every 15 minutes of real time
    hourly = ScheduleConfig("h", "t", cron="@hourly", timezone="Europe/Berlin")
    assert _runs(hourly, start, 3) == ["10-25 02:00+0200", "10-25 02:00+0100", "10-25 03:00+0100"]
    fixed = ScheduleConfig("f", "t", cron="*/30 2 * * *", timezone="Europe/Berlin")
    assert _runs(fixed, start, 3) == ["10-25 02:00+0200", "10-25 02:30+0200", "10-26 02:00+0100"]


def test_an_interval_counts_from_the_last_run_and_the_runs_due_are_every_one_missed_at_most_the_cap() -> None:
    every = ScheduleConfig("e", "t", every=10.0)
    assert cron.next_after(every, 100.0) == 110.0
    assert cron.due(every, 100.0, 135.0) == ([110.0, 120.0, 130.0], False)
    assert cron.due(every, 100.0, 109.0) == ([], False)
    runs, more = cron.due(every, 0.0, 10.0 * (cron.MAX_CATCH_UP + 50))
    assert len(runs) == cron.MAX_CATCH_UP and more and runs[-1] == 10.0 * (cron.MAX_CATCH_UP + 50)
    hourly = ScheduleConfig("c", "t", cron="@hourly", timezone="UTC")
    start = datetime.datetime(2026, 1, 1, 0, 30, tzinfo=datetime.UTC).timestamp()
    runs, more = cron.due(hourly, start, start + 3 * 3600)
    assert [t - start for t in runs] == [1800.0, 5400.0, 9000.0] and not more


class _Steps:
    """croniter, counting its steps (and refusing to walk on without end)."""

    def __init__(self, limit: int) -> None:
        self.count, self.limit, self.real = 0, limit, cron._croniter()

    def __call__(self, *args: Any) -> Any:
        walker = self.real(*args)
        for name in ("get_next", "get_prev"):
            setattr(walker, name, self._counted(getattr(walker, name)))
        return walker

    def _counted(self, step: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.count += 1
            assert self.count <= self.limit, "the runs due are walked one at a time through the downtime"
            return step(*args)
        return counted


def test_the_runs_due_after_a_long_downtime_are_the_latest_ones_found_with_bounded_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """400 days down with a minutely schedule: 576,000 runs missed; only the latest MAX_CATCH_UP are computed
    (each step of the walk once took ~150 us in tq-host's loop: ~80 s a year, past systemd's watchdog)."""
    steps = _Steps(limit=4 * cron.MAX_CATCH_UP)
    monkeypatch.setattr(cron, "_croniter", lambda: steps)
    monkeypatch.setattr(cron, "_WALKERS", {}, raising=False)  # (the croniters it keeps)
    minutely = ScheduleConfig("m", "t", cron="* * * * *", timezone="Europe/Berlin")
    now = datetime.datetime(2026, 12, 4, 17, 30, 20, tzinfo=datetime.UTC).timestamp()
    runs, more = cron.due(minutely, now - 400 * 86400, now)
    assert more and len(runs) == cron.MAX_CATCH_UP
    assert runs[-1] == now - 20 and runs == [now - 20 - 60 * k for k in range(cron.MAX_CATCH_UP - 1, -1, -1)]
    assert steps.count <= 4 * cron.MAX_CATCH_UP
    steps.count = 0
    assert cron.due(minutely, now - 300, now) == ([now - 20 - 60 * k for k in range(4, -1, -1)], False)
    assert steps.count <= 6  # the usual case: a step a run


def test_bad_cron_expressions_and_zones_say_what_is_expected() -> None:
    assert cron.check_cron("*/5 * * * *") is None and cron.check_cron("@daily") is None
    assert "five fields" in (cron.check_cron("61 * * * *") or "")
    assert "five fields" in (cron.check_cron("* * * *") or "")
    assert cron.check_timezone("Europe/Berlin") is None
    assert "unknown time zone 'Mars/Olympus'" in (cron.check_timezone("Mars/Olympus") or "")
