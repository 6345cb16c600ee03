"""The jobs a worker runs, one at a time: start an attempt with the handler tq-host resolved, poll it, stop it
on a cancel or at the stop timeout, and report its outcome through the outbox."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import monitor, protocol
from ..log import JobEvents
from . import attempt, handlers
from .attempt import START_TOLD_AFTER, Attempt
from .leftovers import Leftovers
from .outbox import Outbox

MAX_CANCELLED = 10_000  # remembered cancels of jobs not started yet (a bound: the host resends nothing)


class Runner:
    def __init__(self, instance: str, outbox: Outbox, events: JobEvents, logger: logging.Logger,
                 message_size: int, env: dict[str, str], forget: Callable[[Attempt], None]) -> None:
        """`forget`: called with an attempt about to end, before its descriptors are closed (the worker stops
        watching them: their numbers get reused)."""
        self.instance, self.outbox, self.events, self.logger = instance, outbox, events, logger
        self.message_size, self.env, self.forget = message_size, env, forget
        self.current: Attempt | None = None
        self.cancelled: set[tuple[int, int]] = set()  # (job, attempt) cancelled before it started
        self.reexec = False  # a Python handler outlived its stop: the worker re-executes itself once it reported
        self.jobs_done = 0  # attempts run here that ended ok / failed, since this program started
        self.jobs_failed = 0
        self.sampler = monitor.Sampler(time.monotonic())  # the figures each heartbeat carries
        self.leftovers = Leftovers(logger)  # what ended commands left in their process groups

    def cancel(self, msg: protocol.Cancel) -> None:
        """Stop the running attempt, or drop a job not started yet (reported as cancelled); late: ignored."""
        a = self.current
        if a is not None and (a.job.id, a.job.attempt) == (msg.id, msg.attempt):
            self.logger.info("job %d: cancel asked; stopping its attempt %d", msg.id, msg.attempt,
                             extra={"TQ_JOB_ID": msg.id, "TQ_ATTEMPT": msg.attempt})
            a.stop("cancelled", time.monotonic())
            return
        # Not started: it waits in the worker, or still in the inbox behind the Cancel (which overtakes jobs).
        if len(self.cancelled) < MAX_CANCELLED:
            self.cancelled.add((msg.id, msg.attempt))

    def start(self, job: protocol.Job) -> None:
        """Start an attempt, with the handler tq-host resolved for the job (never this worker's own config)."""
        if self.cancelled and (job.id, job.attempt) in self.cancelled:
            self.cancelled.discard((job.id, job.attempt))
            self.outbox.result(protocol.Result(self.instance, job.id, job.attempt, False, "", "cancelled", 0.0,
                                               time.time(), {}))
            return
        now = time.monotonic()
        self.events.event("started", job.id, job.task, job.queue, job.attempt, self.instance)
        env = self.env  # a command's environment gets the job's TQ_* (only a command has one)
        if job.handler.get("handler") == "command":
            env = env | {"TQ_JOB_ID": str(job.id), "TQ_TASK": job.task, "TQ_ATTEMPT": str(job.attempt),
                         "TQ_WORKER": self.instance}
        execution = handlers.start(job.handler, job, env)
        if isinstance(execution, handlers.Done):  # ended as it began (echo, a failure to start): nothing to watch
            self._report(job, execution.outcome, attempt.result(self.instance, job, execution.outcome, 0.0,
                                                                time.time(), {}, self.message_size))
            return
        self.current = Attempt(job, execution, now, now + job.timeout, time.time())
        self.poll(now)

    def poll(self, now: float, stop_started: float = 0.0, stop_timeout: float = 0.0) -> bool:
        """Finish the running attempt if it is done or out of time (or, once the worker was asked to stop at
        `stop_started`, past `stop_timeout`: handed back); True if it finished."""
        a = self.current
        if a is None:
            return False
        outcome = a.poll(now)
        if a.forced:
            self.reexec = True  # a Python thread cannot be killed: report, then start afresh
        if outcome is None and stop_started and now - stop_started > stop_timeout:
            a.execution.kill()
            if not a.execution.killable:
                self.reexec = True
            self._end(now)
            self.outbox.message(protocol.Release(self.instance, a.job.id, a.job.attempt))
            self.events.event("released", a.job.id, a.job.task, a.job.queue, a.job.attempt, self.instance,
                              f"interrupted by stop after worker.stop_timeout = {stop_timeout:g}s")
            return True
        if outcome is None:
            if not a.start_told and now - a.started >= START_TOLD_AFTER:
                a.start_told = True
                self.outbox.message(protocol.Started(self.instance, a.job.id, a.job.attempt, a.started_at))
            return False
        self._end(now)
        self._report(a.job, outcome, a.report(self.instance, outcome, self.message_size))
        return True

    def _report(self, job: protocol.Job, outcome: handlers.Outcome, result: protocol.Result) -> None:
        if outcome.ok:
            self.jobs_done += 1
        else:
            self.jobs_failed += 1
        self.outbox.result(result)
        self.events.event("done" if outcome.ok else "failed", job.id, job.task, job.queue, job.attempt,
                          self.instance, outcome.error if not outcome.ok else "")

    def _end(self, now: float) -> None:
        a = self.current
        assert a is not None
        self.forget(a)
        a.execution.close()
        if a.execution.group:  # a command: stop what it left in its process group
            self.leftovers.ended(a.execution.group, a.job, a.grace, now)
        self.current = None

    def figures(self, now: float) -> dict[str, object]:
        """This worker's figures for the heartbeat (see monitor.py), with the running attempt's."""
        a = self.current
        if a is None:
            return self.sampler.sample(now, self.jobs_done, self.jobs_failed)
        job = {"id": a.job.id, "task": a.job.task, "attempt": a.job.attempt,
               "elapsed_seconds": round(now - a.started, 2)}
        session = a.execution.proc.pid if isinstance(a.execution, handlers.Command) else None
        return self.sampler.sample(now, self.jobs_done, self.jobs_failed, job, session)
