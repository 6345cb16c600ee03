"""What tq-host counts for its metrics (host/stats.py), from the stream's committed events."""

from __future__ import annotations

import time

import pytest

from tq.host import stats as stats_module
from tq.host.stats import Stats
from tq.host.stream import EventStream


def committed(stats: Stats, *events: tuple[str, int, str, str]) -> None:
    """The events as the stream hands them on after their commit."""
    s = EventStream([], lambda c: None, stats.count)
    for name, job, task, queue in events:
        s.events.extend((time.time(), name, job, task, queue, None, None, ""))
    s.committed()
    s.digest()


def test_outcomes_failures_and_retries_are_counted_by_queue_and_task() -> None:
    st = Stats()
    committed(st, ("submitted", 1, "t", "q"), ("dispatched", 1, "t", "q"), ("retrying", 1, "t", "q"),
              ("next attempt", 1, "t", "q"), ("lost", 1, "t", "q"), ("dead", 1, "t", "q"),
              ("submitted", 2, "u", "q"), ("done", 2, "u", "q"), ("cancelled", 3, "u", "r"))
    s = EventStream([], lambda c: None, st.count)
    s.worker_event("lost", "w1", ["q"])
    s.committed()
    s.digest()
    p = st.public()
    assert p["submitted"] == [["q", "t", 1], ["q", "u", 1]]
    assert p["finished"] == [["q", "t", "dead", 1], ["q", "u", "done", 1], ["r", "u", "cancelled", 1]]
    assert p["failed"] == [["q", "t", 3]]  # the retrying one, the lost one, and the last, which made it dead
    assert p["retried"] == [["q", "t", 1]]
    assert p["workers_lost"] == 1


def test_durations_and_commits_fall_in_their_buckets() -> None:
    st = Stats()
    for seconds in (0.001, 0.005, 0.3, 7200.0):
        st.duration("t", seconds)
    h = st.public()["durations"]["tasks"]["t"]
    assert h["counts"][0] == 2 and h["counts"][-1] == 1 and sum(h["counts"]) == 4  # 0.005 is in le=0.005
    assert abs(h["sum"] - 7200.306) < 1e-9


def test_past_the_series_bound_tasks_are_counted_under_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "MAX_SERIES", 3)
    monkeypatch.setattr(stats_module, "MAX_KEYS", 4)
    st = Stats()
    committed(st, *[("submitted", i + 1, f"task{i}", "q") for i in range(6)])
    submitted = st.public()["submitted"]
    assert len(submitted) == 4 and ["q", "_other", 3] in submitted
    assert sum(n for _q, _t, n in submitted) == 6
    for i in range(5):
        st.duration(f"task{i}", 1.0)
    assert set(st.public()["durations"]["tasks"]) == {"task0", "task1", "task2", "_other"}
