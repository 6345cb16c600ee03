from __future__ import annotations

import logging

import pytest

from tq import log


def test_routine_job_events_stay_within_the_budget_and_failures_always_pass(
        caplog: pytest.LogCaptureFixture) -> None:
    events = log.JobEvents(logging.getLogger("t"), "all", per_second=5)
    with caplog.at_level(logging.INFO):
        for i in range(50):
            events.event("done", i, "task", "q", 1, "1")
        events.event("dead", 99, "task", "q", 4, "1", "boom")
    routine = [r for r in caplog.records if r.getMessage().endswith(" done")]
    assert 5 <= len(routine) <= 10  # at most two one-second windows in this loop
    dead = [r for r in caplog.records if "dead" in r.getMessage()]
    assert len(dead) == 1 and dead[0].TQ_JOB_ID == 99  # type: ignore[attr-defined]
    assert events.suppressed + len(routine) >= 50


def test_failures_mode_logs_only_failures(caplog: pytest.LogCaptureFixture) -> None:
    events = log.JobEvents(logging.getLogger("t"), "failures")
    with caplog.at_level(logging.INFO):
        events.event("done", 1, "task", "q")
        events.event("retrying", 2, "task", "q")
    assert [r.getMessage() for r in caplog.records] == ["job 2 failed"]  # (tq-host's "retrying", as events say)


def test_plain_lines_carry_the_fields() -> None:
    record = logging.LogRecord("tq-host", logging.INFO, __file__, 1, "job 1 done", (), None)
    record.TQ_JOB_ID = 1  # type: ignore[attr-defined]
    record.TQ_WORKER = "3"  # type: ignore[attr-defined]
    assert log._PlainFormatter().format(record) == "tq-host: info: job 1 done [job_id=1 worker=3]"


def test_suppressed_events_are_summarised_once_the_second_is_over_without_more_events(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.2]
    monkeypatch.setattr(log.time, "monotonic", lambda: clock[0])
    events = log.JobEvents(logging.getLogger("t"), "all", per_second=2)
    with caplog.at_level(logging.INFO):
        for i in range(5):
            events.event("done", i, "task", "q")
        events.tick()  # the same second: nothing to say yet
        assert len(caplog.records) == 2
        clock[0] = 101.0
        events.tick()
    assert caplog.records[-1].getMessage().startswith("3 routine job events not logged")
    assert events.suppressed == 0
