"""Which ready job goes to which worker, and sending the step's assignments once they are committed.

A job is sent ahead to a worker (prefetch) only where that cannot leave another
worker idle: a job of a task known to be fast (its runs average under FAST_JOB,
measured from results) may wait in the inbox of a worker that holds only fast
jobs, and the same worker takes the next ones too (one worker woken for a batch
costs less than four workers woken for one job each). A job of a slow or unknown
task goes only to an idle worker; until one is free it waits in tq-host, where
priority order, pause, cancel and the queues' limits still apply.
"""

from __future__ import annotations

import time

from .. import config, protocol
from .fleet import Fleet
from .jobs import JobTable
from .openjobs import ASSIGNED
from .queues import Queues
from .records import JobRecord
from .workerstate import WorkerState

LONG_JOB = 0.1  # seconds; a worker holding a job this long gets no prefetched jobs until it reports
FAST_JOB = 0.005  # seconds; a task whose runs take less (on average) is dispatched in batches to one worker
BLOCKED_BACKOFF = 0.2  # seconds a worker whose inbox was full gets no new jobs
MAX_TASKS_TIMED = 10_000  # task names come from clients: never trust their count


class Dispatcher:
    def __init__(self, cfg: config.Config, jobs: JobTable, fleet: Fleet, queues: Queues) -> None:
        self.cfg, self.jobs, self.fleet, self.queues = cfg, jobs, fleet, queues
        self.task_seconds: dict[str, float] = {}  # task name -> moving average of its run time
        self.outbox: list[tuple[WorkerState, JobRecord]] = []  # assigned this step, sent after the commit

    def configure(self, cfg: config.Config) -> None:
        """Take a reloaded configuration."""
        self.cfg = cfg

    def timed(self, task: str, seconds: float) -> None:
        """A run of `task` took `seconds` (from a result)."""
        if len(self.task_seconds) > MAX_TASKS_TIMED:
            self.task_seconds.clear()
        average = self.task_seconds.get(task)
        self.task_seconds[task] = seconds if average is None else 0.8 * average + 0.2 * seconds

    def _fast(self, task: str) -> bool:
        return self.task_seconds.get(task, FAST_JOB) < FAST_JOB

    def assign(self, now: float) -> None:
        """Hand ready jobs to live workers with free slots, best priority first (staged; sent by `send`)."""
        everyone = self.fleet.dispatchable(now)
        for w in everyone:
            if w.assigned and not self._takes_more(w):  # the jobs given below cannot change this
                continue
            steered = self.queues.paused or self.queues.limited  # (not a call per worker per step otherwise)
            open_queues = self.queues.open_of(w.queues, now) if steered else w.queues
            while len(w.assigned) < w.prefetch:
                job = self.jobs.pop_ready(open_queues)
                if job is None:
                    break
                fast = self._fast(job.task)
                if (w.assigned and not fast) or (
                        job.lost_on == w.instance and any(o is not w and job.queue in o.queues for o in everyone)):
                    # A slow or unknown job waits for an idle worker; a job lost with this worker last time (it may
                    # kill it) goes to another one.
                    self.jobs.put_back(job)
                    break
                self.jobs.assign(job, w.instance)
                w.assigned.add(job.id)
                self.outbox.append((w, job))
                if steered and self.queues.dispatched(job.queue, now):  # a limited queue may be at its limit
                    open_queues = self.queues.open_of(w.queues, now)
                if not fast:
                    break

    def _takes_more(self, w: WorkerState) -> bool:
        """Whether a worker that holds jobs may be sent more: only while every job it holds is of a fast task and
        none has been held or run for LONG_JOB (a fast task's job can hang too; an assigned job's started_at is
        when it was assigned). (One loop, no calls: it runs for every busy worker at every step.)"""
        jobs, seconds = self.jobs.jobs, self.task_seconds
        now = time.time()
        for job_id in w.assigned:
            job = jobs.get(job_id)
            if job is None:
                continue
            if seconds.get(job.task, FAST_JOB) >= FAST_JOB or (job.started_at and now - job.started_at > LONG_JOB):
                return False
        return True

    def _handler_now(self, task: str) -> str:
        """How to run a job stored before jobs carried their handler: as the configuration says now."""
        found = self.cfg.task_for(task)
        spec = found.handler_spec() if found is not None else {"handler": "missing", "task": task}
        return protocol.to_json(spec)

    def send(self) -> bool:
        """After the commit: send the step's assignments. An inbox that is full (or gone) gets its jobs taken
        back, and its worker rests for BLOCKED_BACKOFF; True when that happened (the host commits again)."""
        undelivered = []
        for w, jobs, data in self._batches():
            if w.inbox is None or not w.inbox.send(data, protocol.mq_priority(max(j.priority for j in jobs))):
                undelivered += [(w, job) for job in jobs]
        self.outbox.clear()
        for w, job in undelivered:
            w.blocked_until = time.monotonic() + BLOCKED_BACKOFF
            if job.state == ASSIGNED and job.worker == w.instance:
                w.assigned.discard(job.id)
                self.jobs.take_back(job)
        return bool(undelivered)

    def _batches(self) -> list[tuple[WorkerState, list[JobRecord], bytes]]:
        """The step's assignments as Jobs messages: per worker, in priority order, each within the size limit.

        A batch carries the best priority of its jobs, so a batch with an urgent job overtakes older ones.
        """
        limit = self.cfg.mqueue.max_message_size
        per_worker: dict[str, tuple[WorkerState, list[JobRecord]]] = {}
        for w, job in self.outbox:
            per_worker.setdefault(w.instance, (w, []))[1].append(job)
        batches = []
        for w, jobs in per_worker.values():
            chunk: list[JobRecord] = []
            items: list[bytes] = []
            size = protocol.batch_size([])
            for job in jobs:
                item = protocol.job_item(job.id, job.attempts, job.task, job.args_json, job.payload_json, job.timeout,
                                         job.priority, job.queue, job.handler_json or self._handler_now(job.task))
                if chunk and size + len(item) + 1 > limit:
                    batches.append((w, chunk, protocol.jobs_message(items)))
                    chunk, items, size = [], [], protocol.batch_size([])
                size += len(item) + (1 if items else 0)  # and its comma
                chunk.append(job)
                items.append(item)
            if chunk:
                batches.append((w, chunk, protocol.jobs_message(items)))
        return batches
