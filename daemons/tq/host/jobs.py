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

from .. import states
from ..log import JobEvents
from ..protocol import Result, to_json
from ..states import FINAL
from ..usage import describe as describe_usage
from .openjobs import (
    ASSIGNED,
    CANCELLED,
    DEAD,
    DEFERRED,
    DONE,
    FAILED,
    ON_WORKER,
    QUEUED,
    RUNNING,
    WAITING,
    OpenJobs,
)
from .records import AFTER, CHAIN, RESTING, JobRecord
from .store import Store

CANCELLABLE = tuple(s.value for s in states.CANCELLABLE)
RETRYABLE = tuple(s.value for s in states.RETRYABLE)


class InvalidTransition(Exception):
    """The job's state does not allow what was asked; the message says which states do."""


class RetryRefused(InvalidTransition):
    """A retry that the job's state allows, refused all the same: the message says why (the job it waits for will
    never be done, its unique key is held)."""


def unique_text(job: JobRecord) -> str:
    """A job's unique key as the operator gave it: KEY, or the task's own (`unique = true`: its task and args)."""
    if job.unique_key == f"{job.task} {job.args_json}":
        return f"{job.task} {job.args_json}, its task has unique = true"
    return f"unique key {job.unique_key}"


class JobTable(OpenJobs):
    def __init__(self, store: Store, events: JobEvents, on_final: Callable[[JobRecord], None]) -> None:
        super().__init__(store)
        self.events, self.on_final = events, on_final
        self.stopping: dict[int, str] = {}  # a running job being cancelled -> who cancelled it ("by uid N (name)")

    def load(self) -> None:
        """Rebuild the table from the store: at start, and after a failed commit."""
        for index in (self.jobs, self.retried, self.ready, self.delayed, self.counts, self.unique, self.running_in,
                      self.deferred, self.stopping):
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
        by = self.stopping.pop(job.id, "") if job.cancel_requested else ""
        if job.cancel_requested and not result.ok:
            self._cancelled(job, result.instance, f"stopped on its worker ({result.error}; {cost})", by)
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
            self._cancelled(job, job.worker, error, self.stopping.pop(job.id, ""))
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

    def cancel(self, job: JobRecord, by: str = "") -> bool:
        """Cancel a job; True when it is running and must first be stopped on its worker (it is cancelled when
        the worker reports, or is lost). A job assigned to a worker but not started is cancelled at once (the
        caller tells the worker to drop it). `by`: who cancels it ("by uid N (name)"), in its error and event."""
        if job.state not in CANCELLABLE:
            raise InvalidTransition(f"job {job.id} is {job.state}; only queued, delayed, deferred, failed (waiting "
                                    "to retry), assigned or running jobs can be cancelled")
        if job.state == RUNNING:
            job.cancel_requested = True
            self.stopping[job.id] = by
            return True
        job.finished_at = time.time()
        if job.state == ASSIGNED:
            self._cancelled(job, job.worker, f"before it started (it waited in worker {job.worker}'s inbox)", by)
        else:
            self._cancelled(job, None, "", by)
        return False

    def _cancelled(self, job: JobRecord, instance: str | None, detail: str, by: str = "") -> None:
        """The job ends cancelled: its error says so (not its last failed attempt's), who cancelled it and why."""
        job.error = f"cancelled{' ' + by if by else ''}{': ' + detail if detail else ''}"
        self._move(job, CANCELLED)
        self.events.event("cancelled", job.id, job.task, job.queue, job.attempts, instance,
                          f"{by}{': ' if by and detail else ''}{detail}")

    def retry(self, job: JobRecord) -> list[int]:
        """A dead, cancelled or failed job runs again, its attempts reset: queued, or deferred again behind the
        job it waits for (a chain's step before it, --after) while that one is open; with the result of a done
        step before it as payload, as at its release. A dead or cancelled chain step brings back, deferred, the
        later steps of its chain cancelled because of it: their ids are returned. RetryRefused if the job it
        waits for is dead or cancelled, or another open job holds its unique key."""
        job = self.jobs.get(job.id, job)  # (a bulk retry's listing may predate a step brought back with another)
        if job.state not in RETRYABLE:
            raise InvalidTransition(f"job {job.id} is {job.state}; only dead, cancelled or failed jobs can be "
                                    "retried")
        self._check_key_free(job)
        if job.id in self.jobs:  # failed, waiting to retry (it ran: the job before it was done)
            job.attempts, job.error, job.run_at, job.cancel_requested = 0, None, time.time(), False  # queued since
            self._move(job, QUEUED)
            self.events.event("retry requested", job.id, job.task, job.queue)
            return []
        parent = self._waited_for(job)
        if parent is not None and parent.state == DONE and job.link == CHAIN:
            job.payload_json = to_json(parent.result)
        later = self._cut_off(job)
        deferred = parent is not None and parent.state != DONE
        self._reopen(job, DEFERRED if deferred else QUEUED)
        self.events.event("retry requested", job.id, job.task, job.queue,
                          detail=f"deferred: it waits for job {job.parent}" if deferred else "")
        for step in later:
            self._reopen(step, DEFERRED)
            self.events.event("retry requested", step.id, step.task, step.queue,
                              detail=f"with job {job.id}, before it in the chain")
        return [step.id for step in later]

    def _check_key_free(self, job: JobRecord) -> None:
        holder = None if job.unique_key is None else self.holder(job.unique_key)
        if holder is not None and holder.id != job.id:
            raise RetryRefused(f"job {holder.id} is open with the unique key of job {job.id} "
                               f"({unique_text(job)}): retry job {job.id} once job {holder.id} has finished")

    def _waited_for(self, job: JobRecord) -> JobRecord | None:
        """The job that this dead or cancelled one waits for (a chain's step before it, --after), if any."""
        if job.parent is None or job.link not in (CHAIN, AFTER):
            return None
        parent = self.find(job.parent)
        if parent is None:
            if job.started_at is not None:  # it was dispatched once: its parent was done, its payload is set
                return None
            raise RetryRefused(f"job {job.id} waits for job {job.parent}, which is gone (pruned): it would never "
                               "run")
        if parent.state in (DEAD, CANCELLED):
            raise RetryRefused(f"job {job.id} waits for job {parent.id}, which is {parent.state}: retry job "
                               f"{parent.id}" + (" (its later steps come back with it)" if job.link == CHAIN else ""))
        return parent

    def _cut_off(self, job: JobRecord) -> list[JobRecord]:
        """The later steps of this job's chain that were cancelled because of it (and so on down the chain)."""
        steps: list[JobRecord] = []
        while True:
            cause = f"cancelled: job {job.id} before it in the chain is "
            nexts = [s for s in map(self.store.get, self.store.children(job.id)) if s is not None and
                     s.link == CHAIN and s.state == CANCELLED and (s.error or "").startswith(cause)]
            if len(nexts) != 1:
                return steps
            job = nexts[0]
            steps.append(job)

    def _reopen(self, job: JobRecord, state: str) -> None:
        """A dead or cancelled job back into the indexes, as new."""
        self.counts[job.state] -= 1
        self.store.rest(job.id, job.state, False)
        job.attempts, job.error, job.finished_at, job.cancel_requested = 0, None, None, False
        job.run_at = time.time() if state == QUEUED else None  # queued since (opencounts)
        job.state = state
        self._index(job)
        self.retried.add(job.id)
        self.store.update(job)
