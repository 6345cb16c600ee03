"""The event stream: job and worker events, pushed to the control connections that asked to `subscribe`.

An event is a tuple while the host keeps it; it becomes a JSON line only when a
subscriber is sent it. Events are published only once the step that made them
is committed (a submit undone by a failed commit was never an event), and the
last RECENT of them are kept for `tqctl events` without --follow.

A subscriber never slows the host. Events go out every FLUSH_INTERVAL, as one
send per subscriber, with a non-blocking send that the kernel takes or not; the
host never waits for a reader. What does not fit the socket waits (one batch,
at most MAX_BATCH events); while it waits, further events for that subscriber
are counted, not kept, and it is sent `{"missed": N}` where the gap is, before
the events that follow it. Subscribers with the same filters share one batch:
the host's work per flush is one selection per distinct filter and one send per
subscriber, whatever the rate of events.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .server import Conn

FLUSH_INTERVAL = 0.1  # seconds between sends to the subscribers while events come
MAX_BATCH = 1000  # events a subscriber is sent per flush; the rest of a burst is counted as missed
RECENT = 1000  # events kept for `tqctl events` (without --follow)
MAX_UNSENT = 200_000  # events kept between two flushes (a bound on memory if a flush is late)
# What the host's journal names an event (log.JobEvents), as the stream names it.
STREAM_NAMES = {"dispatched": "started", "retrying": "failed", "lost": "failed", "retry requested": "retried",
                "next attempt": "retrying"}

# (time, event, job id, task, queue, attempt, worker, detail); a worker event has job id 0, task "" and its
# queues joined by commas in place of the queue.
Event = tuple[float, str, int, str, str, "int | None", "str | None", str]
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def as_dict(e: Event) -> dict[str, Any]:
    """An event as the stream shows it."""
    ts, name, job_id, task, queue, attempt, worker, detail = e
    out: dict[str, Any] = {"event": name, "ts": round(ts, 6)}
    if job_id:
        out.update(job=job_id, task=task, queue=queue)
        if attempt is not None:
            out["attempt"] = attempt
    else:
        out["queues"] = queue.split(",") if queue else []
    if worker is not None:
        out["worker"] = worker
    if detail:
        out["detail"] = detail
    return out


def _line(e: Event) -> bytes:
    return _ENCODER.encode(as_dict(e)).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a subscriber wants: every given field must match (a worker event matches no job or task)."""

    job: int | None = None
    task: str | None = None
    queue: str | None = None

    def matches(self, e: Event) -> bool:
        if self.job is not None and e[2] != self.job:
            return False
        if self.task is not None and (not e[2] or e[3] != self.task):
            return False
        return self.queue is None or (e[4] == self.queue if e[2] else self.queue in e[4].split(","))


@dataclass(slots=True)
class Subscriber:
    conn: Conn
    filter: Filter
    pending: memoryview | None = None  # the rest of a send the socket did not take
    missed: int = 0  # events not sent since the last one that was (told as {"missed": N})


class _Selection:
    """The events of one flush, indexed lazily by the field a filter names first."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self._indexes: dict[int, dict[Any, list[Event]]] = {}

    def of(self, f: Filter) -> Sequence[Event]:
        if f.job is not None:
            found = self._index(2).get(f.job, [])
        elif f.task is not None:
            found = self._index(3).get(f.task, [])
        elif f.queue is not None:
            found = self._index(4).get(f.queue, [])
        else:
            return self.events
        return [e for e in found if f.matches(e)]

    def _index(self, column: int) -> dict[Any, list[Event]]:
        index = self._indexes.get(column)
        if index is None:
            index = self._indexes[column] = collections.defaultdict(list)
            for e in self.events:
                if column == 4 and not e[2]:  # a worker event: under each of its queues
                    for queue in e[4].split(","):
                        index[queue].append(e)
                else:
                    index[e[column]].append(e)
        return index


class EventStream:
    def __init__(self, close: Callable[[Conn], None]) -> None:
        self.close = close  # closes a connection whose socket failed (Server.close_conn)
        self.staged: list[Event] = []  # this step's events, published by committed()
        self.unsent: list[Event] = []  # published since the last flush (kept only while anyone subscribes)
        self.recent: collections.deque[Event] = collections.deque(maxlen=RECENT)
        self.subscribers: list[Subscriber] = []
        self.next_flush = 0.0  # monotonic
        self.dropped = 0  # events never sent to anyone: more than MAX_UNSENT came between two flushes

    # ---- events -----------------------------------------------------------

    def job_event(self, event: str, job_id: int, task: str, queue: str, attempt: int | None = None,
                  worker: str | None = None, detail: str = "") -> None:
        """A job event as log.JobEvents is told it (its sink): staged until the step's commit."""
        self.staged.append((time.time(), STREAM_NAMES.get(event, event), job_id, task, queue, attempt, worker,
                            detail))

    def worker_event(self, event: str, instance: str, queues: list[str], detail: str = "") -> None:
        self.staged.append((time.time(), event, 0, "", ",".join(queues), None, instance, detail))

    def committed(self) -> None:
        """The step's commit succeeded: its events happened."""
        if not self.staged:
            return
        self.recent.extend(self.staged)
        if self.subscribers:
            if len(self.unsent) + len(self.staged) > MAX_UNSENT:
                self.dropped += len(self.staged)
                for sub in self.subscribers:
                    sub.missed += len(self.staged)
            else:
                self.unsent += self.staged
        self.staged.clear()

    def undo(self) -> None:
        """The step's commit failed: nothing it did happened."""
        self.staged.clear()

    def recent_events(self, f: Filter, limit: int) -> list[dict[str, Any]]:
        """The last `limit` of the recent events that match `f`, oldest first."""
        found: list[Event] = []
        for e in reversed(self.recent):
            if len(found) >= limit:
                break
            if f.matches(e):
                found.append(e)
        return [as_dict(e) for e in reversed(found)]

    # ---- subscribers ------------------------------------------------------

    def subscribe(self, conn: Conn, f: Filter) -> None:
        """From the next flush, `conn` is sent the events that match `f`."""
        self.subscribers.append(Subscriber(conn, f))
        if len(self.subscribers) == 1:
            self.next_flush = time.monotonic() + FLUSH_INTERVAL

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until events wait to be sent (None: none wait)."""
        if not self.subscribers or not (self.unsent or any(s.pending is not None or s.missed
                                                            for s in self.subscribers)):
            return None
        return max(self.next_flush - now, 0.0)

    def flush(self, now: float) -> None:
        """Send each subscriber the events that match its filter (called every step; works every interval)."""
        if not self.subscribers or now < self.next_flush:
            return
        self.next_flush = now + FLUSH_INTERVAL
        events, self.unsent = self.unsent, []
        selection = _Selection(events)
        batches: dict[Filter, tuple[bytes, int, int]] = {}
        lines: dict[int, bytes] = {}  # each event's line, made once for everyone (by the event's identity)
        live = []
        for sub in self.subscribers:
            if sub.conn.closed:
                continue
            live.append(sub)
            batch = batches.get(sub.filter)
            if batch is None:
                chosen = selection.of(sub.filter)
                sent = chosen[:MAX_BATCH]
                data = b"".join([lines.get(id(e)) or lines.setdefault(id(e), _line(e)) for e in sent])
                batch = batches[sub.filter] = (data, len(sent), len(chosen) - len(sent))
            self._send(sub, *batch)
        self.subscribers = live

    def _send(self, sub: Subscriber, data: bytes, count: int, over: int) -> None:
        if sub.pending is not None:
            self._write(sub, [sub.pending])
        if sub.pending is not None or sub.conn.wbuf:  # still behind (or the subscribe reply is): count these
            sub.missed += count + over
            return
        parts: list[bytes | memoryview] = []
        if sub.missed:
            parts.append(b'{"missed":%d}\n' % sub.missed)
            sub.missed = 0
        if data:
            parts.append(data)
        sub.missed += over  # the rest of a burst: told before the next events
        if parts:
            self._write(sub, parts)

    def _write(self, sub: Subscriber, parts: list[bytes | memoryview]) -> None:
        """Send what the socket takes now; keep the rest as the subscriber's pending bytes."""
        sub.pending = None
        if not parts:
            return
        try:
            n = sub.conn.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close(sub.conn)
            return
        total = sum(len(p) for p in parts)
        if n < total:
            rest = memoryview(b"".join(parts))[n:]
            sub.pending = rest

    def public(self) -> dict[str, Any]:
        return {"subscribers": len(self.subscribers), "behind": sum(s.pending is not None for s in self.subscribers),
                "dropped": self.dropped}
