"""Job states: the one list that the store, tq-host and tqctl share."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's state; each member is its own name as a string, so the store and JSON keep plain text."""

    QUEUED = "queued"
    DELAYED = "delayed"  # waits for its run_at
    DEFERRED = "deferred"  # waits for another job to finish (submit --after, the next step of a chain)
    ASSIGNED = "assigned"  # handed to a worker, waiting in its inbox: running once its handler starts
    RUNNING = "running"
    FAILED = "failed"  # an attempt failed: waits for its run_at, then runs again
    DONE = "done"
    DEAD = "dead"  # out of attempts, until `tqctl retry`
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.DONE, JobState.DEAD, JobState.CANCELLED})
"""States a job leaves only by `tqctl retry`."""

# The states a job can be cancelled in, and retried in (tq-host refuses the others; tqctl's --state offers these).
CANCELLABLE = (JobState.QUEUED, JobState.DELAYED, JobState.DEFERRED, JobState.FAILED, JobState.ASSIGNED,
               JobState.RUNNING)
RETRYABLE = (JobState.DEAD, JobState.CANCELLED, JobState.FAILED)
