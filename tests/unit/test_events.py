"""One vocabulary for job and worker events (tq/events.py): the order of an event's fields as the host appends
them, and the names the daemons emit."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from tq import events, log
from tq.host.stream import EventStream

DAEMONS = Path(events.__file__).resolve().parent


def test_job_and_worker_events_are_appended_in_the_field_order_events_names() -> None:
    captured: list[object] = []
    job_events = log.JobEvents(logging.getLogger("t"), "none", capture=captured)
    job_events.tick(12.5)
    job_events.event("done", 7, "task", "q", 2, "w1", "1.0 s")
    job_events.notify("next attempt", 8, "task2", "q2", 3)
    s = EventStream(captured, lambda c: None, lambda flat: None)
    s.worker_event("up", "w2", ["a", "b"], "pid 1")
    flat = s.events
    assert len(flat) == 3 * events.FIELDS
    done, retry, up = (flat[k * events.FIELDS:(k + 1) * events.FIELDS] for k in range(3))
    assert [done[i] for i in (events.TIME, events.NAME, events.JOB, events.TASK, events.QUEUE, events.ATTEMPT,
                              events.WORKER, events.DETAIL)] == [12.5, "done", 7, "task", "q", 2, "w1", "1.0 s"]
    assert (retry[events.NAME], retry[events.JOB], retry[events.ATTEMPT], retry[events.WORKER]) == (
        "next attempt", 8, 3, None)
    assert (up[events.NAME], up[events.JOB], up[events.TASK], up[events.QUEUE], up[events.WORKER]) == (
        "up", 0, "", "a,b", "w2")
    assert flat[events.QUEUE::events.FIELDS] == ["q", "q2", "a,b"]


def test_the_stream_shows_an_event_by_its_stream_name_with_its_fields_named() -> None:
    assert events.as_dict((1.5, "dispatched", 3, "t", "q", 1, "w", "")) == {
        "event": "assigned", "ts": 1.5, "job": 3, "task": "t", "queue": "q", "attempt": 1, "worker": "w"}
    assert events.as_dict((2.0, "lost", 0, "", "a,b", None, "w", "no message")) == {
        "event": "lost", "ts": 2.0, "queues": ["a", "b"], "worker": "w", "detail": "no message"}


def _emitted() -> set[str]:
    """The event names written as literals where the daemons emit events: JobEvents.event and notify, the fleet's
    on_event (first argument), and the host's JobTable._fail (its fourth)."""
    names: set[str] = set()
    for path in DAEMONS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = {"event": 0, "notify": 0, "on_event": 0, "_fail": 3}.get(node.func.attr)
            if where is None or len(node.args) <= where:
                continue
            names |= {c.value for c in ast.walk(node.args[where])
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def test_every_event_the_daemons_emit_is_named_in_events_and_every_name_there_is_emitted() -> None:
    vocabulary = {*events.HOST_JOB_EVENTS, *events.WORKER_JOB_EVENTS, *events.STREAM_ONLY, *events.WORKER_EVENTS}
    assert _emitted() == vocabulary
    journal = {*events.HOST_JOB_EVENTS, *events.WORKER_JOB_EVENTS, *events.STREAM_ONLY}
    assert set(events.STREAM_NAMES) <= journal
    assert (events.ALWAYS | events.FINAL | events.FAILED_ATTEMPT).issubset(journal)


def test_a_selection_chooses_the_same_events_as_tq_host_holds_them_and_as_the_stream_shows_them() -> None:
    held: list[events.Event] = [
        (1.0, "done", 3, "a.b", "q1", 1, "w1", ""),
        (2.0, "submitted", 4, "a.c", "q2", None, None, ""),
        (3.0, "up", 0, "", "q1,q2", None, "w1", "pid 9"),
        (4.0, "stopped", 0, "", "", None, "w2", ""),
    ]
    selections = [events.Selection(job, task, queue) for job in (None, 3, 4, 99) for task in (None, "a.b", "")
                  for queue in (None, "q1", "q2", "q3")]
    chosen = {s: [e[events.TIME] for e in held if s.matches(e)] for s in selections}
    assert chosen == {s: [e[events.TIME] for e in held if s.shows(events.as_dict(e))] for s in selections}
    assert chosen[events.Selection(queue="q2")] == [2.0, 3.0]  # a worker event: each of its queues
    assert chosen[events.Selection(task="a.b")] == [1.0]  # a worker event has no task
    assert chosen[events.Selection(job=3, queue="q2")] == []
    assert chosen[events.Selection()] == [1.0, 2.0, 3.0, 4.0]
    assert events.Selection(4, None, "q2").fields() == {"job": 4, "queue": "q2"}
