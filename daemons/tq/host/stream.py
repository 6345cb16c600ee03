"""The event stream: job and worker events, pushed to the control connections that asked to `subscribe`.

An event is a tuple while the host keeps it; it becomes a JSON line only when a
subscriber is sent it. Events count only once the step that made them is
committed (a submit undone by a failed commit was never an event). A commit
only marks how far the events are committed: they are handed on (to the
metrics' counts, the last RECENT kept for `tqctl events`, the subscribers'
groups) in batches, by digest(), when DIGEST_AT have come or somebody asks.
The host's cost per event is its fields appended to a flat list: no object
that the garbage collector tracks outlives the step (a tuple per event did, and
made the collector's full passes over the open jobs come more often: a batch
of 20,000 submits was 14% slower).

A subscriber never slows the host. Events go out every FLUSH_INTERVAL (longer
with many subscribers: at most SENDS_PER_SECOND in all), as one send per
subscriber, with a non-blocking send that the kernel takes or not; the
host never waits for a reader. What does not fit the socket waits (one batch);
while it waits, further events for that subscriber are counted, not kept, and
it is sent `{"missed": N}` where the gap is, before the events that follow it.
A follower back after a host restart asks for the recent events since its last
one (since_events): it is told where it cannot know what it missed.
Subscribers with the same filters share one batch: the host's work per flush is
one selection per distinct filter and one send per subscriber.

The stream carries at most EVENTS_PER_SECOND in all, shared equally by the
subscribers (MAX_BATCH a flush at most to one): past that, a burst is counted,
not sent. Both bounds are on what the followers cost the machine, theirs as
well as the host's (a reader wakes for each send and parses each line), so
that any number of them leave the host its pace: 200 followers of the whole
stream are sent 5 events a second each, every 2 s, while the host drains
tens of thousands of jobs a second. A follower of one job, a task or a quiet
queue is sent everything it asked for.

The budget is what a reader pays per event: `tqctl events --follow` takes
about 30 us of CPU to parse and print one on a slow machine (its memory gone
cold since the last send), so 1,000 a second cost the followers 3 % of one
core together. At 5,000 a second, 200 followers took 15 % of a core away from
a drain on two cores (paired runs in docs/performance.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..events import FIELDS, JOB, QUEUE, TASK, TIME, Event, Selection, as_dict
from .server import Conn

FLUSH_INTERVAL = 0.1  # seconds between sends to the subscribers while events come (the least) ...
MAX_INTERVAL = 2.0  # ... and the most
SENDS_PER_SECOND = 100  # sends to all the subscribers together: the interval grows with their number
EVENTS_PER_SECOND = 1_000  # events sent to all the subscribers together, each given an equal share
MAX_BATCH = 1000  # events a subscriber is sent per flush; the rest of a burst is counted as missed
MIN_SHARE = 10  # ... and never fewer than this
RECENT = 1000  # events kept for `tqctl events` (without --follow)
DIGEST_AT = 512  # committed events handed on at once: a bound on the memory they take, and on a step's delay
# An event's fields, their order (FIELDS an event in EventStream.events), its names and as_dict: events.py.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _events(flat: list[Any]) -> Iterator[Event]:
    """The events (tuples) of a flat list of their fields."""
    return zip(*[iter(flat)] * FIELDS, strict=True)


def _line(e: Event) -> bytes:
    return _ENCODER.encode(as_dict(e)).encode() + b"\n"


def _rows(events: list[Event]) -> bytes:
    """A flush's events as one line of rows, each event's fields in events.py's order: a sixth of the lines' cost
    (no dict per event; the C encoder walks the tuples). tq-gateway asks for them and makes the dicts itself."""
    return _ENCODER.encode({"rows": events}).encode() + b"\n" if events else b""


@dataclass(frozen=True, slots=True)
class Filter(Selection):
    """Which events a subscriber wants (events.Selection), and how they are sent: subscribers with equal filters
    share one batch."""

    rows: bool = False  # sent as rows (format "rows"), not as a line an event
    rate: int | None = None  # at most this many events a second: tq-gateway's one subscription


@dataclass(slots=True)
class Subscriber:
    conn: Conn
    filter: Filter
    pending: memoryview | None = None  # the rest of a send the socket did not take
    missed: int = 0  # events not sent since the last one that was (told as {"missed": N})


@dataclass(slots=True)
class _Group:
    """The subscribers with one filter, and the events kept for them until the next flush: at most `share`
    (what one subscriber may be sent per flush), the rest only counted."""

    filter: Filter
    subscribers: list[Subscriber]
    events: list[Event]
    over: int = 0
    share: int = MAX_BATCH  # the events it keeps a flush (EventStream._pace)


class EventStream:
    def __init__(self, events: list[Any], close: Callable[[Conn], None], count: Callable[[list[Any]], None]) -> None:
        self.close = close  # closes a connection whose socket failed (Server.close_conn)
        self.count = count  # the metrics' counting of committed events (Stats.count)
        # The fields of the events as they come (log.JobEvents extends this very list), FIELDS an event: the first
        # `upto` are committed.
        self.events = events
        self.upto = 0
        self.recent: list[Any] = []  # the fields of the last RECENT events (tuples only when asked for)
        self.started = time.time()
        self.kept_since = self.started  # every event after this is among the recent ones: the start, or the last
        # one dropped from them (a follower back after a host restart is told what it may have missed: since_events)
        self.subscribers: list[Subscriber] = []
        self.groups: dict[Filter, _Group] = {}
        # Where an event looks for the groups that want it: by the field a group's filter names first.
        self._everything: list[_Group] = []  # the groups of every event (as lines, as rows)
        self._by: tuple[dict[Any, list[_Group]], ...] = ({}, {}, {})  # job, task, queue
        self.interval = FLUSH_INTERVAL
        self.share = MAX_BATCH
        self.next_flush = 0.0  # monotonic
        self.due = False  # a flush has something to do: events kept, or a subscriber behind

    # ---- events -----------------------------------------------------------

    def worker_event(self, event: str, instance: str, queues: list[str], detail: str = "") -> None:
        # (rare) In events.py's order: TIME, NAME, JOB (0), TASK (""), QUEUE (the queues), ATTEMPT, WORKER, DETAIL.
        self.events.extend((time.time(), event, 0, "", ",".join(queues), None, instance, detail))

    def committed(self) -> None:
        """The step's commit succeeded: its events happened."""
        self.upto = n = len(self.events)
        if n >= DIGEST_AT * FIELDS:
            self.digest()
        elif n and self.subscribers:
            self.due = True

    def undo(self) -> None:
        """The step's commit failed: nothing it did happened."""
        del self.events[self.upto:]

    def digest(self) -> None:
        """Hand the committed events on: counted, kept among the recent ones, offered to the subscribers'
        groups (each keeps at most its share until the next flush)."""
        if not self.upto:
            return
        flat = self.events[:self.upto]
        del self.events[:self.upto]
        self.upto = 0
        self.count(flat)
        keep = RECENT * FIELDS
        self.recent += flat[-keep:]
        over = len(self.recent) - keep
        if len(flat) > keep:  # the last one dropped: of this batch, which is newer than every kept one before
            self.kept_since = flat[len(flat) - keep - FIELDS + TIME]
        elif over > 0:
            self.kept_since = self.recent[over - FIELDS + TIME]
        if over > 0:
            del self.recent[:over]
        for everything in self._everything:
            self.due = True
            n = len(flat) // FIELDS
            room = max(everything.share - len(everything.events), 0)
            everything.events += _events(flat[:room * FIELDS])
            everything.over += max(0, n - room)
        by_job, by_task, by_queue = self._by
        if (by_job and not by_job.keys().isdisjoint(flat[JOB::FIELDS])) or (
                by_task and not by_task.keys().isdisjoint(flat[TASK::FIELDS])) or (
                by_queue and not by_queue.keys().isdisjoint(flat[QUEUE::FIELDS])) or (
                by_queue and 0 in flat[JOB::FIELDS]):  # (a worker event: its queues are joined by commas)
            # Some event is for a filter: only then a look at each (set lookups in C decide that first).
            for e in _events(flat):
                if by_job and e[JOB] in by_job:
                    self._offer(by_job[e[JOB]], e)
                if by_task and e[TASK] in by_task:
                    self._offer(by_task[e[TASK]], e)
                if by_queue:
                    for queue in (e[QUEUE],) if e[JOB] else e[QUEUE].split(","):  # a worker event: each of its queues
                        if queue in by_queue:
                            self._offer(by_queue[queue], e)

    def _offer(self, groups: list[_Group], e: Event) -> None:
        for group in groups:
            if group.filter.matches(e):
                self._keep(group, e)

    def _keep(self, group: _Group, e: Event) -> None:
        self.due = True
        if len(group.events) < group.share:
            group.events.append(e)
        else:
            group.over += 1

    def recent_events(self, f: Filter, limit: int) -> list[dict[str, Any]]:
        """The last `limit` of the recent events that match `f`, oldest first."""
        self.digest()
        found: list[Event] = []
        for e in reversed(list(_events(self.recent))):
            if len(found) >= limit:
                break
            if f.matches(e):
                found.append(e)
        return [as_dict(e) for e in reversed(found)]

    def since_events(self, f: Filter, after: float, limit: int) -> list[dict[str, Any]]:
        """The recent events that match `f` and came after `after` (a follower's last one, before it lost the
        host), oldest first: at most `limit`, after a `{"missed": ...}` line where some may be gone. N when
        `limit` cut N; null when this host cannot know, having started, or dropped older events, since then."""
        self.digest()
        found = [e for e in _events(self.recent) if e[TIME] > after and f.matches(e)]
        gap: list[dict[str, Any]] = []
        if after < self.kept_since:
            reason = "tq-host restarted" if self.kept_since == self.started else "older events are not kept"
            gap.append({"missed": None, "since": after, "until": self.kept_since, "reason": reason})
        elif len(found) > limit:
            gap.append({"missed": len(found) - limit, "reason": "more than the replay's limit"})
        return gap + [as_dict(e) for e in (found[-limit:] if limit else [])]

    # ---- subscribers ------------------------------------------------------

    def subscribe(self, conn: Conn, f: Filter) -> None:
        """From the next flush, `conn` is sent the events that match `f` (those committed from now on)."""
        self.digest()  # the events before: handed on to the groups there are
        conn.subscribed = True
        sub = Subscriber(conn, f)
        self.subscribers.append(sub)
        group = self.groups.get(f)
        if group is None:
            group = self.groups[f] = _Group(f, [], [])
            self._index()
        group.subscribers.append(sub)
        if len(self.subscribers) == 1:
            self.next_flush = time.monotonic() + FLUSH_INTERVAL
        self._pace()

    def _index(self) -> None:
        self._everything = [g for f, g in self.groups.items() if f.job is None and f.task is None and f.queue is None]
        self._by = ({}, {}, {})
        for f, group in self.groups.items():
            key, index = ((f.job, self._by[0]) if f.job is not None else (f.task, self._by[1]) if f.task is not None
                          else (f.queue, self._by[2]) if f.queue is not None else (None, None))
            if index is not None:
                index.setdefault(key, []).append(group)

    def _pace(self) -> None:
        """The flush interval and each subscriber's share, from their number (see the module's docstring)."""
        n = max(len(self.subscribers), 1)
        self.interval = min(MAX_INTERVAL, max(FLUSH_INTERVAL, n / SENDS_PER_SECOND))
        self.share = min(MAX_BATCH, max(MIN_SHARE, int(EVENTS_PER_SECOND * self.interval) // n))
        for f, group in self.groups.items():
            group.share = self.share if f.rate is None else min(self.share, max(1, round(f.rate * self.interval)))

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until events wait to be sent (None: none wait)."""
        return max(self.next_flush - now, 0.0) if self.due else None

    def flush(self, now: float) -> None:
        """Send each subscriber the events kept for its group (called every step; works every interval)."""
        if not self.due or now < self.next_flush:
            return
        self.digest()
        self.next_flush = now + self.interval
        self.due = gone = False
        for group in list(self.groups.values()):  # (a failed send closes its connection, which drops it)
            events, over = group.events, group.over
            group.events, group.over = [], 0
            data = _rows(events) if group.filter.rows else b"".join(map(_line, events))
            for sub in group.subscribers:
                if sub.conn.closed:
                    gone = True
                else:
                    self._send(sub, data, len(events), over)
                    self.due = self.due or sub.pending is not None or sub.missed > 0
        if gone:
            self.forget_closed()

    def forget_closed(self, _conn: Conn | None = None) -> None:
        """Drop the subscribers whose connection closed (Server.on_close calls this with the connection)."""
        self.subscribers = [s for s in self.subscribers if not s.conn.closed]
        for f, group in list(self.groups.items()):
            group.subscribers = [s for s in group.subscribers if not s.conn.closed]
            if not group.subscribers:
                del self.groups[f]
        self._index()
        self._pace()

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
        try:
            n = sub.conn.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close(sub.conn)
            return
        if n < sum(len(p) for p in parts):
            sub.pending = memoryview(b"".join(parts))[n:]

    def public(self) -> dict[str, Any]:
        return {"subscribers": len(self.subscribers), "behind": sum(s.pending is not None for s in self.subscribers),
                "interval": self.interval, "share": self.share}
