"""One attempt running on a worker: its handler's execution, its deadline, and how it is stopped.

A stop (the job's timeout, or `tqctl cancel`) asks first: SIGTERM to a command's
process group, or the cancelled flag of a Python handler (`tq.job.current()`).
Past the job's `kill_grace` it forces: SIGKILL to the process group, or, since
a thread cannot be killed, the worker re-executes itself once it has reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .. import protocol
from . import handlers

DEFAULT_KILL_GRACE = 5.0
# Seconds a handler runs before tq-host is told that it started (protocol.Started): a job that ends sooner says
# when it started in its result, so fast jobs cost no message more.
START_TOLD_AFTER = 0.005


@dataclass
class Attempt:
    job: protocol.Job
    execution: handlers.Execution
    started: float  # monotonic
    deadline: float  # monotonic: past it the attempt is stopped as timed out
    started_at: float  # wall clock, reported in the result
    stop_reason: str = ""  # set once a stop was asked: the error it ends with
    kill_at: float = math.inf  # monotonic: past it a stop is forced
    forced: bool = False  # a Python handler outlived its grace: the worker must re-execute itself
    start_told: bool = False  # tq-host was told that it started

    @property
    def grace(self) -> float:
        value = self.job.handler.get("kill_grace", DEFAULT_KILL_GRACE)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_KILL_GRACE

    def stop(self, reason: str, now: float) -> None:
        """Ask the attempt to stop; it ends failed with `reason` (at the latest after its kill_grace)."""
        if self.stop_reason:
            return
        self.stop_reason, self.kill_at = reason, now + self.grace
        self.execution.terminate()

    def poll(self, now: float) -> handlers.Outcome | None:
        """The outcome once the attempt ended (stopping it when its time is up), else None."""
        outcome = self.execution.poll()
        if outcome is None and not self.stop_reason and now >= self.deadline:
            self.stop(f"timed out after {self.job.timeout:g}s", now)
            outcome = self.execution.poll()
        if outcome is None and self.stop_reason and now >= self.kill_at:
            self.forced = not self.execution.killable
            self.execution.kill()
            return handlers.Outcome(False, "", self.stop_reason)
        if outcome is not None and self.stop_reason:  # it ended because it was stopped, whatever it returned
            return handlers.Outcome(False, outcome.output, self.stop_reason)
        return outcome

    def report(self, instance: str, outcome: handlers.Outcome, limit: int) -> protocol.Result:
        """The Result of this attempt, within the queues' message size."""
        return result(instance, self.job, outcome, round(time.monotonic() - self.started, 6), self.started_at,
                      self.execution.usage(), limit)

    def next_event(self) -> float:
        """The monotonic time at which the worker has something to do even if nothing is heard from the handler:
        tell tq-host that it started, stop it, or force it."""
        due = self.kill_at if self.stop_reason else self.deadline
        return due if self.start_told else min(due, self.started + START_TOLD_AFTER)


def result(instance: str, job: protocol.Job, outcome: handlers.Outcome, duration: float, started_at: float,
           usage: dict[str, Any], limit: int) -> protocol.Result:
    """A job's Result within the queues' message size: long output is cut, with a note."""
    output, error = outcome.output, outcome.error
    while True:
        msg = protocol.Result(instance, job.id, job.attempt, outcome.ok, output, error, duration, started_at, usage)
        if 6 * (len(output) + len(error)) + 1024 < limit:  # fits whatever JSON escapes: no need to encode it
            return msg
        try:
            protocol.encode(msg, limit)
            return msg
        except protocol.TooLarge:
            if len(error) > 200:
                error = error[: len(error) // 2] + " [cut]"
            else:
                output = output[: len(output) // 2] + f" [cut to fit mqueue.max_message_size = {limit}]"
