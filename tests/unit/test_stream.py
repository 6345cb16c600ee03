"""The event stream's rules, on real socket pairs: published after the commit, filtered, bounded, gaps counted."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tq import events
from tq.host import stream as stream_module
from tq.host.server import Conn
from tq.host.stream import EventStream, Filter


@pytest.fixture
def pair() -> Iterator[tuple[Conn, socket.socket]]:
    host_end, reader = socket.socketpair()
    host_end.setblocking(False)
    yield Conn(host_end, 0), reader
    host_end.close()
    reader.close()


def received(reader: socket.socket) -> list[dict[str, Any]]:
    reader.setblocking(False)
    data = b""
    try:
        while chunk := reader.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return [json.loads(line) for line in data.splitlines()]


def event(s: EventStream, name: str, job: int, task: str, queue: str, attempt: int | None = None,
          worker: str | None = None) -> None:
    """An event as log.JobEvents appends it to the stream."""
    s.events.extend((time.time(), name, job, task, queue, attempt, worker, ""))


def stream(close: Any = None) -> EventStream:
    return EventStream([], close or (lambda c: None), lambda events: None)


def flush(s: EventStream) -> None:
    s.next_flush = 0.0
    s.flush(1.0)


def test_events_are_sent_only_once_their_step_is_committed_and_an_undone_step_never(
        pair: tuple[Conn, socket.socket]) -> None:
    conn, reader = pair
    s = stream()
    s.subscribe(conn, Filter())
    event(s, "submitted", 1, "t", "q")
    flush(s)
    assert received(reader) == []
    s.undo()
    assert s.events == []
    event(s, "submitted", 2, "t", "q")
    event(s, "dispatched", 2, "t", "q", 1, "w1")
    s.committed()
    flush(s)
    got = received(reader)
    assert [(e["job"], e["event"]) for e in got] == [(2, "submitted"), (2, "assigned")]
    assert got[1]["worker"] == "w1" and got[1]["attempt"] == 1
    assert [e["job"] for e in s.recent_events(Filter(), 10)] == [2, 2]


def test_filters_by_job_task_and_queue_and_worker_events_by_queue(pair: tuple[Conn, socket.socket]) -> None:
    conn, reader = pair
    s = stream()
    s.subscribe(conn, Filter(queue="b"))
    event(s, "submitted", 1, "t", "a")
    event(s, "submitted", 2, "t", "b")
    s.worker_event("up", "w1", ["a", "b"])
    s.worker_event("up", "w2", ["a"])
    s.committed()
    flush(s)
    got = received(reader)
    assert [(e.get("job"), e.get("worker")) for e in got] == [(2, None), (None, "w1")]
    assert [e["job"] for e in s.recent_events(Filter(task="t", queue="a"), 10)] == [1]
    assert s.recent_events(Filter(job=2), 10)[0]["queue"] == "b"
    assert s.recent_events(Filter(task="t"), 1)[0]["job"] == 2  # the last one


def test_a_burst_past_the_batch_bound_and_a_reader_that_does_not_read_get_counted_gaps(
        pair: tuple[Conn, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    conn, reader = pair
    monkeypatch.setattr(stream_module, "MAX_BATCH", 10)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s = stream()
    s.subscribe(conn, Filter())
    for i in range(25):
        event(s, "submitted", i + 1, "t", "q")
    s.committed()
    flush(s)
    event(s, "submitted", 100, "t", "q")
    s.committed()
    flush(s)
    got = received(reader)
    assert [e.get("job") for e in got[:10]] == list(range(1, 11))
    assert got[10] == {"missed": 15} and got[11]["job"] == 100
    # Now the reader stops reading: the socket fills, then each flush's events are counted, not kept.
    sent = 0
    while s.subscribers[0].pending is None:
        for _ in range(10):
            sent += 1
            event(s, "done", 1000 + sent, "t" * 200, "q")
        s.committed()
        flush(s)
    for _ in range(3):
        event(s, "done", 5000, "t", "q")
        s.committed()
        flush(s)
    assert s.subscribers[0].missed == 3
    got = received(reader)
    flush(s)  # room again: the rest of the pending batch, then the count
    got += received(reader)
    assert {"missed": 3} in got and sum(1 for e in got if e.get("event") == "done") == sent


def test_a_closed_subscriber_is_dropped_and_a_failed_send_closes_it(pair: tuple[Conn, socket.socket]) -> None:
    conn, reader = pair
    closed: list[Conn] = []
    s = stream(closed.append)
    s.subscribe(conn, Filter())
    reader.close()
    event(s, "submitted", 1, "t", "q")
    s.committed()
    flush(s)
    assert closed == [conn]
    conn.closed = True  # as Server.close_conn does, and then tells the stream
    s.forget_closed(conn)
    assert s.subscribers == [] and s.groups == {}


@pytest.mark.parametrize("per_step", [1, 7, 600, 2500])
def test_the_recent_events_are_the_last_thousand_whatever_the_steps_and_no_more_are_kept(per_step: int) -> None:
    s = stream()
    job = 0
    for _ in range(5000 // per_step + 1):
        for _ in range(per_step):
            job += 1
            event(s, "submitted", job, "t", "q")
        s.committed()
        s.digest()
    got = s.recent_events(Filter(), stream_module.RECENT)
    assert [e["job"] for e in got] == list(range(job - stream_module.RECENT + 1, job + 1))
    assert len(s.recent) == stream_module.RECENT * events.FIELDS  # no more are kept
    assert [e["job"] for e in s.recent_events(Filter(job=job - 3), 10)] == [job - 3]


def test_a_replay_since_a_time_says_what_may_be_missing_before_the_events_after_it() -> None:
    s = stream()
    first = s.started
    assert s.since_events(Filter(), first - 10, 100)[0] == {"missed": None, "since": first - 10, "until": first,
                                                            "reason": "tq-host restarted"}
    for i in range(1, stream_module.RECENT + 11):  # ten more than are kept
        s.events.extend((first + i, "submitted", i, "t", "q", None, None, ""))
    s.committed()
    gone = s.since_events(Filter(), first + 5, 2000)
    assert gone[0] == {"missed": None, "since": first + 5, "until": first + 10, "reason": "older events are not kept"}
    assert [e["job"] for e in gone[1:]] == list(range(11, stream_module.RECENT + 11))
    assert s.since_events(Filter(), first + stream_module.RECENT + 8, 100)[0]["job"] == stream_module.RECENT + 9
    cut = s.since_events(Filter(), first + 20, 5)
    assert cut[0] == {"missed": stream_module.RECENT - 15, "reason": "more than the replay's limit"}
    assert [e["job"] for e in cut[1:]] == list(range(stream_module.RECENT + 6, stream_module.RECENT + 11))
    assert s.since_events(Filter(job=3000), first + 20, 5) == []


def test_a_subscriber_of_rows_gets_a_flush_as_one_line_that_makes_the_same_events(
        pair: tuple[Conn, socket.socket]) -> None:
    conn, reader = pair
    lines_end, lines_reader = socket.socketpair()
    lines_end.setblocking(False)
    s = stream()
    s.subscribe(conn, Filter(rows=True))
    s.subscribe(Conn(lines_end, 0), Filter())
    event(s, "submitted", 1, "t", "q")
    event(s, "dispatched", 1, "t", "q", 1, "w1")
    s.worker_event("live", "w1", ["q", "r"])
    s.committed()
    flush(s)
    (batch,) = received(reader)
    as_lines = received(lines_reader)
    lines_end.close()
    lines_reader.close()
    assert len(batch["rows"]) == 3
    assert [events.as_dict(tuple(row)) for row in batch["rows"]] == as_lines


def test_a_subscriber_with_a_rate_keeps_that_many_a_second_and_is_told_the_rest_missed(
        pair: tuple[Conn, socket.socket]) -> None:
    conn, reader = pair
    s = stream()
    s.subscribe(conn, Filter(rate=20))  # 2 a flush (every 0.1 s)
    for job in range(1, 11):
        event(s, "submitted", job, "t", "q")
    s.committed()
    flush(s)
    assert [e["job"] for e in received(reader)] == [1, 2]
    event(s, "submitted", 11, "t", "q")
    s.committed()
    flush(s)
    got = received(reader)
    assert got[0] == {"missed": 8} and [e["job"] for e in got[1:]] == [11]
