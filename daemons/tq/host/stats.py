"""What tq-host counts for its metrics: outcomes, retries, job durations and commit latency.

Plain integers and lists, bumped on the host's own loop (no locks, no client
library in the daemon); the `metrics` op hands a snapshot to tqctl, which
writes the Prometheus text (tq/metrics.py). Counters start at zero when the
host starts, as Prometheus expects of a counter.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any

# Job run times (seconds): the client library's defaults, then minutes to an hour (jobs may run that long).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# A commit's time (seconds): from a WAL append to an fsync on a slow disk.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MAX_SERIES = 1000  # (queue, task) pairs or tasks with series of their own; more are counted under task "_other"
OTHER = "_other"
FINAL = {"done", "dead", "cancelled"}


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def public(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.sum}


class Stats:
    def __init__(self) -> None:
        self.submitted: collections.Counter[tuple[str, str]] = collections.Counter()  # (queue, task)
        self.finished: collections.Counter[tuple[str, str, str]] = collections.Counter()  # (queue, task, state)
        self.failed: collections.Counter[tuple[str, str]] = collections.Counter()  # attempts that failed
        self.retried: collections.Counter[tuple[str, str]] = collections.Counter()  # ... and ran again
        self.workers_lost = 0
        self.durations: dict[str, Histogram] = {}
        self.commits = Histogram(COMMIT_BUCKETS)
        self.commit_errors = 0

    def count(self, events: list[Any]) -> None:
        """Count the committed events of a step (stream.Event tuples)."""
        for _ts, name, job_id, task, queue, *_rest in events:
            if not job_id:
                if name == "lost":
                    self.workers_lost += 1
                continue
            if name == "submitted":
                self.submitted[self._series(self.submitted, queue, task)] += 1
            elif name in FINAL:
                q, t = self._series(self.submitted, queue, task)
                self.finished[q, t, name] += 1
                if name == "dead":  # its last attempt failed
                    self.failed[self._series(self.failed, queue, task)] += 1
            elif name == "failed":
                self.failed[self._series(self.failed, queue, task)] += 1
            elif name == "retrying":
                self.retried[self._series(self.retried, queue, task)] += 1

    @staticmethod
    def _series(known: collections.Counter[tuple[str, str]], queue: str, task: str) -> tuple[str, str]:
        """The labels of a series: (queue, task), or (queue, "_other") once MAX_SERIES are known."""
        key = (queue, task)
        return key if key in known or len(known) < MAX_SERIES else (queue, OTHER)

    def duration(self, task: str, seconds: float) -> None:
        h = self.durations.get(task)
        if h is None:
            if len(self.durations) >= MAX_SERIES:
                task = OTHER
            h = self.durations.setdefault(task, Histogram(DURATION_BUCKETS))
        h.observe(seconds)

    def public(self) -> dict[str, Any]:
        return {
            "submitted": [[q, t, n] for (q, t), n in sorted(self.submitted.items())],
            "finished": [[q, t, s, n] for (q, t, s), n in sorted(self.finished.items())],
            "failed": [[q, t, n] for (q, t), n in sorted(self.failed.items())],
            "retried": [[q, t, n] for (q, t), n in sorted(self.retried.items())],
            "workers_lost": self.workers_lost,
            "durations": {"buckets": DURATION_BUCKETS,
                          "tasks": {task: h.public() for task, h in sorted(self.durations.items())}},
            "commits": {"buckets": COMMIT_BUCKETS, **self.commits.public(), "errors": self.commit_errors},
        }
