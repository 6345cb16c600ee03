"""Each queue's open jobs by state and since when its oldest queued job is queued (`tqctl queues`, the metrics).

Counting walks the open jobs: O(open jobs), about 0.2 us a job natively. Kept instead at each transition, the
counts cost every job more than the walk costs the scrapes (docs/performance.md, issue 27). A request from an
operator (`tqctl queues`) always counts afresh. A periodic reader (a /metrics scrape, the dashboard's poll) may
take the last count instead, so that it never spends more than SHARE of tq-host's time on it: a count that cost
C seconds of CPU is reused for C / SHARE seconds. Below FLOOR (a few thousand open jobs natively) it is never
reused, so a small queue's figures are always now; a backlog of 1,000,000 jobs is counted every 20 s or so
instead of taking a fifth of tq-host at a scrape a second.
"""

from __future__ import annotations

import collections
import operator
import time
from collections.abc import Callable

from .jobs import JobTable
from .openjobs import QUEUED
from .records import JobRecord

SHARE = 0.01  # of tq-host's time, at most, for periodic readers' counts
FLOOR = 0.001  # CPU seconds: a count cheaper than this is not reused

# queue -> (its open jobs by state, since when its oldest queued job is queued: its submit, or its run_at)
ByQueue = dict[str, tuple[dict[str, int], float | None]]


class OpenCounts:
    def __init__(self, jobs: JobTable, cpu: Callable[[], float] = time.thread_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs, self.cpu, self.clock = jobs, cpu, clock
        self._last: ByQueue = {}
        self._reuse_until = 0.0  # monotonic time until which _last may be given to a periodic reader

    def now(self) -> ByQueue:
        """Counted now (and kept for periodic readers)."""
        started = self.cpu()
        counts = by_queue(self.jobs.jobs, self.jobs.retried)
        cost = self.cpu() - started
        self._last = counts
        self._reuse_until = self.clock() + cost / SHARE if cost >= FLOOR else 0.0
        return counts

    def recent(self) -> ByQueue:
        """The last count if it may still be reused, else counted now."""
        if self.clock() < self._reuse_until:
            return self._last
        return self.now()


def by_queue(jobs: dict[int, JobRecord], retried: set[int]) -> ByQueue:
    """Per queue: its open jobs by state, and since when its oldest queued job is queued (_older).

    Counted in C (Counter over attrgetter); the oldest queued job of each queue is found by walking the open jobs
    in id order (JobTable.jobs is, but for the retried ones, which are looked at apart) only until each queue with
    queued jobs has its first queued since its submit (the jobs before it that waited for a run time are counted
    too): a Python loop over every open job cost about 1,500 instructions a job.
    """
    counts = collections.Counter(map(_QUEUE_STATE, jobs.values()))
    out: ByQueue = {}
    for (queue, state), n in counts.items():
        out.setdefault(queue, ({}, None))[0][state] = n
    waiting = {queue for queue, (states, _) in out.items() if states.get(QUEUED)}
    oldest: dict[str, float] = {}
    for job in jobs.values():
        if not waiting:
            break
        if job.state == QUEUED and job.queue in waiting:
            _older(oldest, job)
            if job.run_at is None:  # queued since its submit: no job after it in id order was queued sooner
                waiting.discard(job.queue)
    for job_id in retried:
        back = jobs.get(job_id)
        if back is not None and back.state == QUEUED:
            _older(oldest, back)
    return {queue: (states, oldest.get(queue)) for queue, (states, _) in out.items()}


def _older(oldest: dict[str, float], job: JobRecord) -> None:
    """Count a queued job in its queue's oldest: queued since its run time if it had one (a delay, the backoff
    before a retry, `tqctl retry`), else since its submit."""
    since = max(job.created_at, job.run_at or 0.0)
    if since < oldest.get(job.queue, since + 1):
        oldest[job.queue] = since


_QUEUE_STATE = operator.attrgetter("queue", "state")
