"""The open jobs in tq-host's memory and the indexes over them, with the reads and upkeep that change no job.

Every job not yet finished by id, the ready heaps (one per job queue) and the delayed heap, the unique keys their
open jobs hold, the counts per state, the running jobs per queue (while a queue has a concurrency limit) and the
jobs deferred after each job. The heaps delete lazily: an entry whose job has moved on is skipped when it comes
up. The job table (jobs.py's JobTable) is OpenJobs with every state transition, each of which keeps these.
"""

from __future__ import annotations

import collections
import heapq

from ..states import FINAL, JobState
from .listing import page
from .records import CHAIN, MAX_JOB_ID, JobRecord
from .store import Store

# A job's state is kept as the plain string: sqlite3 binds a str subclass (an enum member) on a slower path.
QUEUED, DELAYED, RUNNING, DONE = (s.value for s in (JobState.QUEUED, JobState.DELAYED, JobState.RUNNING,
                                                    JobState.DONE))
FAILED, DEAD, CANCELLED = (s.value for s in (JobState.FAILED, JobState.DEAD, JobState.CANCELLED))
DEFERRED, ASSIGNED = JobState.DEFERRED.value, JobState.ASSIGNED.value
ON_WORKER = (ASSIGNED, RUNNING)  # handed to a worker: waiting in its inbox, or running
WAITING = (DELAYED, FAILED)  # wait for their run_at


class OpenJobs:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs: dict[int, JobRecord] = {}  # every job not in a final state, in ascending id order but for:
        self.retried: set[int] = set()  # ids put back into self.jobs out of order (retry; some may have left since)
        self.ready: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # queue -> (-prio, id)
        self.delayed: list[tuple[float, int]] = []  # (run_at, id) of delayed and failed jobs
        self.counts: collections.Counter[str] = collections.Counter()
        self.unique: dict[str, int] = {}  # unique key -> the open job that holds it (submit --unique)
        # queue -> its running jobs, kept only while a queue has a concurrency limit (count_running)
        self.running_in: collections.Counter[str] = collections.Counter()
        self.count_running = False
        self.deferred: dict[int, list[int]] = collections.defaultdict(list)  # job -> the deferred jobs after it

    def find(self, job_id: int) -> JobRecord | None:
        """A job, open or finished; None for an id outside 1..MAX_JOB_ID (the store could not even look it up)."""
        if not 0 < job_id <= MAX_JOB_ID:
            return None
        return self.jobs.get(job_id) or self.store.get(job_id)

    def holder(self, unique_key: str) -> JobRecord | None:
        """The open job that holds this unique key (queued, delayed, running or waiting to retry), if any."""
        job_id = self.unique.get(unique_key)
        return None if job_id is None else self.jobs.get(job_id)

    def chain_from(self, head: JobRecord) -> list[int]:
        """The ids of a job and of the later steps of its chain (none if it is no chain's head), in order."""
        ids = [head.id]
        while True:
            steps = [j for j in map(self.find, self.store.children(ids[-1])) if j is not None and j.link == CHAIN]
            if not steps:
                return ids
            ids.append(steps[0].id)

    def query(self, state: str | None, queue: str | None, task: str | None, limit: int,
              after: int | None = None) -> list[JobRecord]:
        """Up to `limit` jobs that match, newest first, each as the table has it now; `after`: ids below it."""
        return page(self.jobs, self.retried, self.store.query, state, queue, task, limit, after)

    def running_on(self, instance: str) -> set[int]:
        return {j.id for j in self.jobs.values() if j.state in ON_WORKER and j.worker == instance}

    def _index(self, job: JobRecord) -> None:
        """Put an open job into the in-memory indexes."""
        self.jobs[job.id] = job
        self.counts[job.state] += 1
        if job.state in ON_WORKER:
            if self.count_running:
                self.running_in[job.queue] += 1
        elif job.state == DEFERRED and job.parent is not None:
            self.deferred[job.parent].append(job.id)
        if job.unique_key is not None:
            self.unique.setdefault(job.unique_key, job.id)  # a retried job whose key was taken meanwhile: not it
        if job.state == QUEUED:
            heapq.heappush(self.ready[job.queue], (-job.priority, job.id))
        elif job.state in WAITING:
            heapq.heappush(self.delayed, (job.run_at or 0.0, job.id))

    def next_due(self) -> float | None:
        """The wall-clock time at which the next delayed job is due (None: none waits)."""
        return self.delayed[0][0] if self.delayed else None

    def pop_ready(self, queues: list[str]) -> JobRecord | None:
        """The best ready job of these queues: highest priority, then oldest."""
        best: tuple[int, int] | None = None
        best_queue = ""
        for q in queues:
            heap = self.ready.get(q)
            while heap:
                job = self.jobs.get(heap[0][1])
                if job is not None and job.state == QUEUED and job.queue == q:
                    break
                heapq.heappop(heap)  # stale entry
            if heap and (best is None or heap[0] < best):
                best, best_queue = heap[0], q
        if best is None:
            return None
        heapq.heappop(self.ready[best_queue])
        return self.jobs[best[1]]

    def put_back(self, job: JobRecord) -> None:
        """A ready job from pop_ready that this worker does not take after all: ready again, unchanged."""
        heapq.heappush(self.ready[job.queue], (-job.priority, job.id))

    # ---- upkeep -----------------------------------------------------------

    def counting_running(self, on: bool) -> None:
        """Keep the running jobs per queue (a queue has a concurrency limit), counted afresh when it starts."""
        if on and not self.count_running:
            self.running_in = collections.Counter(j.queue for j in self.jobs.values() if j.state in ON_WORKER)
        self.count_running = on

    def finished(self) -> int:
        return sum(self.counts[state] for state in FINAL)

    def prune(self, before: float, excess: int, limit: int) -> int:
        """Delete up to `limit` finished jobs: those finished before `before`, then `excess` more; how many went."""
        deleted = self.store.prune(before, excess, limit)
        for state, n in deleted.items():
            self.counts[state] -= n
        return sum(deleted.values())

    def trim(self) -> None:
        """Dicts never shrink as entries go: copy the indexes to their present size (after a burst)."""
        self.jobs = dict(self.jobs)
        self.retried = {i for i in self.retried if i in self.jobs}
        self.unique = dict(self.unique)
        self.ready = collections.defaultdict(list, {q: h for q, h in self.ready.items() if h})
