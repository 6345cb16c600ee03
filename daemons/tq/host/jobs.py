"""The job table: every state transition in one place, over the open jobs and their indexes (openjobs.py).

The store holds every job; tq-host keeps those not yet finished in memory (OpenJobs, which JobTable is). Each
transition moves the job in the indexes, stages its row in the store, logs its job event and keeps the counts
per state; a job that reaches a final state is handed to `on_final` (follow-ups and waiters:
submit.Admission.on_final).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from ..log import JobEvents
from ..protocol import Result, to_json
from ..states import FINAL
from ..usage import describe as describe_usage
from .openjobs import (
    ASSIGNED,
    CANCELLED,
    DEAD,
    DEFERRED,
    DELAYED,
    DONE,
    FAILED,
    ON_WORKER,
    QUEUED,
    RUNNING,
    WAITING,
    OpenJobs,
)
from .records import CHAIN, RESTING, JobRecord
from .store import Store

CANCELLABLE = (QUEUED, DELAYED, FAILED, ASSIGNED, RUNNING, DEFERRED)
RETRYABLE = (DEAD, CANCELLED, FAILED)


class InvalidTransition(Exception):
    """The job's state does not allow what was asked; the message says which states do."""


class JobTable(OpenJobs):
    def __init__(self, store: Store, events: JobEvents, on_final: Callable[[JobRecord], None]) -> None:
        super().__init__(store)
        self.events, self.on_final = events, on_final

    def load(self) -> None:
        """Rebuild the table from the store: at start, and after a failed commit."""
        for index in (self.jobs, self.retried, self.ready, self.delayed, self.counts, self.unique, self.running_in,
                      self.deferred):
            index.clear()
        self.counts.update(self.store.count_final())
        for job in self.store.open_jobs():
            self._index(job)
        for parent_id in [p for p in self.deferred if p not in self.jobs]:  # finished, its followers not moved on
            parent = self.store.get(parent_id)
            if parent is not None:
                self._release_after(parent)
            else:  # pruned: nothing to wait for any more
                for job_id in self.deferred.pop(parent_id):
                    self._cancel_deferred(self.jobs[job_id], f"job {parent_id} it waited for is gone")

    def _move(self, job: JobRecord, state: str, change: str = "any") -> None:
        """Move a job to `state` in the indexes and stage the change (`change`: see store._UPDATES)."""
        self.counts[job.state] -= 1
        self.counts[state] += 1
        if self.count_running:  # a job counts against its queue's concurrency from its assignment on
            if job.state in ON_WORKER and state not in ON_WORKER:
                self.running_in[job.queue] -= 1
            elif state in ON_WORKER and job.state not in ON_WORKER:
                self.running_in[job.queue] += 1
        job.state = state
        if state == QUEUED:
            job.worker = None
            heapq.heappush(self.ready[job.queue], (-job.priority, job.id))
        elif state in WAITING:
            heapq.heappush(self.delayed, (job.run_at or 0.0, job.id))
        elif state in FINAL:
            self.jobs.pop(job.id, None)
            if job.unique_key is not None and self.unique.get(job.unique_key) == job.id:
                del self.unique[job.unique_key]  # the key is free again
            if state in RESTING:
                self.store.rest(job.id, state)
            self.on_final(job)
            if job.id in self.deferred:
                self._release_after(job)
        self.store.update(job, change)

    # ---- transitions ------------------------------------------------------

    def add(self, job: JobRecord, detail: str) -> int:
        """A submitted job (queued, or delayed with its run_at): staged in the store, given its id."""
        self.store.insert(job)
        self._index(job)
        self.events.event("submitted", job.id, job.task, job.queue, detail=detail)
        return job.id

    def promote_due(self) -> None:
        """Delayed and failed jobs whose run_at has come are queued."""
        now = time.time()
        while self.delayed and self.delayed[0][0] <= now:
            _, job_id = heapq.heappop(self.delayed)
            job = self.jobs.get(job_id)
            if job is not None and job.state in WAITING and (job.run_at or 0.0) <= now:
                if job.state == FAILED:
                    self.events.notify("next attempt", job.id, job.task, job.queue, job.attempts + 1)
                self._move(job, QUEUED)

    def assign(self, job: JobRecord, instance: str) -> None:
        """A ready job (from pop_ready) is assigned to a worker: its next attempt, waiting in that worker's inbox
        until its handler starts (`begin`, or the result of a job that ended sooner)."""
        job.attempts += 1
        # started_at holds the assignment's time until the handler starts (public() shows none while assigned): a
        # row whose column stays the same size costs SQLite less at the result's UPDATE than a NULL filled later.
        job.worker, job.started_at = instance, time.time()
        self._move(job, ASSIGNED, "dispatched")
        self.events.event("dispatched", job.id, job.task, job.queue, job.attempts, instance)

    def begin(self, job: JobRecord, started: float) -> None:
        """The worker says the assigned job's handler has been running since `started` (wall clock)."""
        job.started_at = started
        self._move(job, RUNNING, "started")
        self.events.notify("started", job.id, job.task, job.queue, job.attempts, job.worker)

    def take_back(self, job: JobRecord) -> None:
        """An assignment that never reached the worker (its inbox was full): queued again, the attempt undone."""
        job.attempts -= 1
        self._move(job, QUEUED)

    def finish(self, job: JobRecord, result: Result) -> None:
        """A worker's result for the running attempt: done, or failed (retried after its backoff) or dead."""
        job.finished_at = time.time()
        if result.started > 0:
            job.started_at = result.started
        if result.usage:
            job.usage_json = to_json(result.usage)
            cost = f"in {result.duration:.3f}s{describe_usage(result.usage)}"
        else:
            job.usage_json, cost = None, f"in {result.duration:.3f}s"
        if job.cancel_requested and not result.ok:
            self._cancelled(job, result.instance, f"stopped on its worker ({result.error}; {cost})")
            return
        if result.ok:
            job.result, job.error = result.output, None
            # The narrower UPDATE where no usage was ever stored for the job (nothing to overwrite).
            self._move(job, DONE, "done" if job.usage_json is None and job.attempts == 1 else "done_usage")
            self.events.event("done", job.id, job.task, job.queue, job.attempts, result.instance, cost)
            return
        self._fail(job, result.instance, result.error, "retrying", f" ({cost})")

    def _fail(self, job: JobRecord, instance: str | None, error: str, event: str, cost: str = "") -> None:
        """The attempt failed: run again after the backoff, or dead once out of attempts."""
        job.error = error
        if job.attempts <= job.retries:
            delay = min(job.backoff * 2 ** max(job.attempts - 1, 0), job.backoff_max)
            job.run_at = time.time() + delay
            self._move(job, FAILED)
            self.events.event(event, job.id, job.task, job.queue, job.attempts, instance,
                              f"{job.error}{cost}; attempt {job.attempts + 1} in {delay:.3g}s")
        else:
            job.finished_at = time.time()
            self._move(job, DEAD)
            self.events.event("dead", job.id, job.task, job.queue, job.attempts, instance,
                              f"{job.error}{cost}; out of attempts ({job.attempts})")

    def release(self, job: JobRecord, instance: str) -> None:
        """A job handed back unrun by a stopping worker: queued again, the attempt not counted (the event names
        the attempt it was released from, as the worker's own does)."""
        attempt = job.attempts
        job.attempts -= 1
        self._move(job, QUEUED)
        self.events.event("released", job.id, job.task, job.queue, attempt, instance,
                          "handed back by a stopping worker")

    def lose(self, job_id: int, cause: str) -> None:
        """A running job whose worker was lost (killed, crashed, restarted, silent): the attempt counts, so a job
        that kills its worker every time ends dead, and its next attempt waits for the backoff."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in ON_WORKER:
            return
        error = f"worker {job.worker} lost while running attempt {job.attempts} of {job.retries + 1} ({cause})"
        job.lost_on = job.worker
        if job.cancel_requested:
            job.finished_at = time.time()
            self._cancelled(job, job.worker, error)
            return
        self._fail(job, job.worker, error, "lost")

    def _release_after(self, parent: JobRecord) -> None:
        """A job finished: the jobs deferred after it are queued if it is done (a chain's next step takes its
        result as payload), else cancelled, and so the rest of a chain with them."""
        for job_id in self.deferred.pop(parent.id, []):
            job = self.jobs.get(job_id)
            if job is None or job.state != DEFERRED:
                continue
            if parent.state != DONE:
                what = "before it in the chain" if job.link == CHAIN else "it waited for"
                self._cancel_deferred(job, f"job {parent.id} {what} is {parent.state}")
                continue
            if job.link == CHAIN:
                job.payload_json = to_json(parent.result)
            self._move(job, QUEUED, "released")
            self.events.event("ready", job.id, job.task, job.queue, detail=f"job {parent.id} is done")

    def _cancel_deferred(self, job: JobRecord, why: str) -> None:
        job.finished_at = time.time()
        self._cancelled(job, None, why)

    def cancel(self, job: JobRecord) -> bool:
        """Cancel a job; True when it is running and must first be stopped on its worker (it is cancelled when
        the worker reports, or is lost). A job assigned to a worker but not started is cancelled at once (the
        caller tells the worker to drop it)."""
        if job.state not in CANCELLABLE:
            raise InvalidTransition(f"job {job.id} is {job.state}; only queued, delayed, failed (waiting to "
                                    "retry), assigned or running jobs can be cancelled")
        if job.state == RUNNING:
            job.cancel_requested = True
            return True
        job.finished_at = time.time()
        if job.state == ASSIGNED:
            self._cancelled(job, job.worker, f"before it started (it waited in worker {job.worker}'s inbox)")
        else:
            self._cancelled(job, None, "")
        return False

    def _cancelled(self, job: JobRecord, instance: str | None, detail: str) -> None:
        if detail:
            job.error = f"cancelled: {detail}"
        self._move(job, CANCELLED)
        self.events.event("cancelled", job.id, job.task, job.queue, job.attempts, instance, detail)

    def retry(self, job: JobRecord) -> None:
        """A dead, cancelled or failed job runs again, its attempts reset."""
        if job.state not in RETRYABLE:
            raise InvalidTransition(f"job {job.id} is {job.state}; only dead, cancelled or failed jobs can be "
                                    "retried")
        job.attempts, job.error, job.finished_at, job.run_at = 0, None, None, time.time()  # queued since (opencounts)
        job.cancel_requested = False
        if job.id in self.jobs:  # failed, waiting to retry
            self._move(job, QUEUED)
        else:  # dead or cancelled: back into the indexes
            self.counts[job.state] -= 1
            self.store.rest(job.id, job.state, False)
            job.state = QUEUED
            self._index(job)
            self.retried.add(job.id)
            self.store.update(job)
        self.events.event("retry requested", job.id, job.task, job.queue)
