"""What tq-host counts for its metrics: outcomes, retries, job durations and commit latency.

Plain integers and lists, bumped on the host's own loop (no locks, no client
library on that path); the `metrics` op takes a snapshot of them
(host/snapshot.py), and tq-host writes it as Prometheus text (tq/metrics.py,
whose client library it imports at the first scrape). Counters start at zero
when the host starts, as Prometheus expects of a counter.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any

from ..events import FAILED_ATTEMPT, FIELDS, FINAL, NAME, QUEUE, TASK

# Job run times (seconds): the client library's defaults, then minutes to an hour (jobs may run that long).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# A commit's time (seconds): from a WAL append to an fsync on a slow disk.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MAX_SERIES = 1000  # (queue, task) pairs or tasks with series of their own; more are counted under task "_other"
MAX_KEYS = 20 * MAX_SERIES  # (event, queue, task) counted before the pairs past MAX_SERIES are folded
OTHER = "_other"
FOLD_AT = 512  # durations kept before they are put in their buckets


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe_all(self, values: list[float]) -> None:
        """Many values at once: sorted, then cut at each bound (a step's delay stays short)."""
        ordered = sorted(values)
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect.bisect_right(ordered, bound, below)
            self.counts[i] += upto - below
            below = upto
        self.counts[-1] += len(ordered) - below
        self.sum += sum(ordered)

    def public(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.sum}


class Stats:
    def __init__(self) -> None:
        # Committed events by (event, queue, task), counted in C (Counter.update over itemgetter); a worker event
        # has its queues joined and task "". Summed up by kind only when asked (public).
        self.events: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.durations: dict[str, Histogram] = {}
        # Durations not yet in their buckets: two appends per result (no tuple the garbage collector would track).
        self.unsorted_tasks: list[str] = []
        self.unsorted: list[float] = []
        self.commits = Histogram(COMMIT_BUCKETS)
        self.commit_errors = 0

    def count(self, flat: list[Any]) -> None:
        """Count committed events (stream.EventStream.events: their fields, FIELDS an event)."""
        self.events.update(zip(flat[NAME::FIELDS], flat[QUEUE::FIELDS], flat[TASK::FIELDS], strict=True))
        if len(self.events) > MAX_KEYS:
            self._fold()

    def _fold(self) -> None:
        """Past MAX_SERIES (queue, task) pairs, the others are counted under task "_other"."""
        kept: set[tuple[str, str]] = set()
        folded: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for (event, queue, task), n in self.events.items():
            if (queue, task) in kept or len(kept) < MAX_SERIES:
                kept.add((queue, task))
                folded[event, queue, task] += n
            else:
                folded[event, queue, OTHER] += n
        self.events = folded

    def duration(self, task: str, seconds: float) -> None:
        self.unsorted_tasks.append(task)
        self.unsorted.append(seconds)
        if len(self.unsorted) >= FOLD_AT:
            self.sort_durations()

    def sort_durations(self) -> None:
        by_task: dict[str, list[float]] = {}
        for task, seconds in zip(self.unsorted_tasks, self.unsorted, strict=True):
            values = by_task.get(task)
            if values is None:
                values = by_task[task] = []
            values.append(seconds)
        for task, values in by_task.items():
            h = self.durations.get(task)
            if h is None:
                h = self.durations.setdefault(task if len(self.durations) < MAX_SERIES else OTHER,
                                              Histogram(DURATION_BUCKETS))
            h.observe_all(values)
        self.unsorted_tasks.clear()
        self.unsorted.clear()

    def public(self) -> dict[str, Any]:
        self.sort_durations()
        submitted: collections.Counter[tuple[str, str]] = collections.Counter()
        finished: collections.Counter[tuple[str, str, str]] = collections.Counter()
        failed: collections.Counter[tuple[str, str]] = collections.Counter()  # attempts that failed ...
        retried: collections.Counter[tuple[str, str]] = collections.Counter()  # ... and ran again
        workers_lost = 0
        for (event, queue, task), n in self.events.items():
            if not task:  # a worker event
                workers_lost += n if event == "lost" else 0
            elif event == "submitted":
                submitted[queue, task] += n
            elif event in FINAL:
                finished[queue, task, event] += n
            if event in FAILED_ATTEMPT and task:  # (a dead job's last attempt failed too)
                failed[queue, task] += n
            elif event == "next attempt":
                retried[queue, task] += n
        return {
            "submitted": [[q, t, n] for (q, t), n in sorted(submitted.items())],
            "finished": [[q, t, s, n] for (q, t, s), n in sorted(finished.items())],
            "failed": [[q, t, n] for (q, t), n in sorted(failed.items())],
            "retried": [[q, t, n] for (q, t), n in sorted(retried.items())],
            "workers_lost": workers_lost,
            "durations": {"buckets": DURATION_BUCKETS,
                          "tasks": {task: h.public() for task, h in sorted(self.durations.items())}},
            "commits": {"buckets": COMMIT_BUCKETS, **self.commits.public(), "errors": self.commit_errors},
        }
