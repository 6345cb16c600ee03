"""What a Python handler can see of the job it runs: `tq.job.current()`.

    from tq import job

    def resize(path):
        for chunk in chunks(path):
            if job.current().cancelled:   # tqctl cancel, or the timeout: clean up and return
                return "stopped early"
            work(chunk)

A handler that is asked to stop (`cancelled` turns true) has the task's
`kill_grace` to return; past it the worker restarts itself, as a thread cannot
be killed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

_local = threading.local()


@dataclass(frozen=True)
class JobContext:
    id: int
    task: str
    attempt: int
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the attempt was asked to stop: cancelled by `tqctl cancel`, or out of time."""
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early when asked to stop; True if it was."""
        return self._stop.wait(seconds)


def current() -> JobContext:
    """The job that the calling thread runs; RuntimeError outside a tq Python handler."""
    context: JobContext | None = getattr(_local, "context", None)
    if context is None:
        raise RuntimeError("tq.job.current() is only available inside a tq Python handler")
    return context


def _enter(context: JobContext) -> None:
    """Called by the worker in the handler's thread before the handler runs."""
    _local.context = context
