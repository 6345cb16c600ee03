"""Job and worker events: their names, the order of their fields, and how the stream shows one.

tq-host keeps an event as its FIELDS fields appended to a flat list (log.JobEvents for job events,
host/stream.py's EventStream.worker_event for worker events), in the order of the index constants below;
host/stream.py and host/stats.py read that list by them (`flat[QUEUE::FIELDS]`, `e[JOB]`). A module-level
integer in a slice or an index costs what a literal does: the per-job path pays nothing for the names.

The emitters write an event's name as a literal (a constant in the per-job path) and its fields as a tuple in
this order; tests/unit/test_events.py holds both to this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# An event's fields, in order: its place in an Event, and in the flat list (event k's QUEUE: flat[k * FIELDS +
# QUEUE]). (Final: mypy knows that e[JOB] is an int and e[QUEUE] a str.)
TIME: Final = 0  # seconds since the epoch: the host's step that made it
NAME: Final = 1  # as tq-host names it inside (the stream and the journal say STREAM_NAMES')
JOB: Final = 2  # the job's id; 0 in a worker event
TASK: Final = 3  # "" in a worker event
QUEUE: Final = 4  # a worker event: the worker's queues, joined by commas
ATTEMPT: Final = 5  # or None
WORKER: Final = 6  # the worker's instance, or None
DETAIL: Final = 7  # words for a person, or ""
FIELDS: Final = 8

# One event as a tuple, its fields in the order above: (time, name, job id, task, queue, attempt, worker, detail).
Event = tuple[float, str, int, str, str, "int | None", "str | None", str]

# Job events as tq-host names them inside (log.JobEvents.event; its journal line says STREAM_NAMES'): tq-host's ...
HOST_JOB_EVENTS = ("submitted", "ready", "dispatched", "done", "retrying", "lost", "dead", "released", "cancelled",
                   "retry requested")  # dispatched: assigned to a worker, in its inbox
WORKER_JOB_EVENTS = ("started", "done", "failed", "released")  # ... and a worker's, about its attempts
STREAM_ONLY = ("next attempt", "started")  # (log.JobEvents.notify) the stream's alone: the journal said it in other
# words (a worker logs "started" itself; tq-host hears of it from the worker's Started, after a few ms of running)
# Worker events (the fleet's, to the stream alone): a worker started or came back, was fenced, lost, stopped.
WORKER_EVENTS = ("up", "fenced", "lost", "stopped")

# What tq-host names an event inside, as the stream and the journal's lines name it (log.JobEvents).
STREAM_NAMES = {"dispatched": "assigned", "retrying": "failed", "lost": "failed", "retry requested": "retried",
                "next attempt": "retrying"}

ALWAYS = {"failed", "retrying", "dead", "lost", "released"}  # logged past the budget, and alone in "failures"
FINAL = {"done", "dead", "cancelled"}  # a job's last event: its outcome
FAILED_ATTEMPT = {"retrying", "lost", "dead"}  # (as tq-host names them inside) an attempt that failed


def as_dict(e: Event) -> dict[str, Any]:
    """An event as the stream shows it."""
    ts, name, job_id, task, queue, attempt, worker, detail = e
    out: dict[str, Any] = {"event": STREAM_NAMES.get(name, name) if job_id else name, "ts": round(ts, 6)}
    if job_id:
        out.update(job=job_id, task=task, queue=queue)
        if attempt is not None:
            out["attempt"] = attempt
    else:
        out["queues"] = queue.split(",") if queue else []
    if worker is not None:
        out["worker"] = worker
    if detail:
        out["detail"] = detail
    return out


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events a follower wants (`tqctl events --job/--task/--queue`): every given field must match, and a
    worker event matches no job or task but each of its queues. tq-host applies it to its events (tuples, `matches`);
    tq-gateway to the events as the stream shows them (`shows`), for its followers of its one subscription."""

    job: int | None = None
    task: str | None = None
    queue: str | None = None

    def fields(self) -> dict[str, Any]:
        """The given fields, as a subscribe request names them."""
        return {k: v for k, v in (("job", self.job), ("task", self.task), ("queue", self.queue)) if v is not None}

    def matches(self, e: Event) -> bool:
        if self.job is not None and e[JOB] != self.job:
            return False
        if self.task is not None and (not e[JOB] or e[TASK] != self.task):
            return False
        return self.queue is None or (e[QUEUE] == self.queue if e[JOB] else self.queue in e[QUEUE].split(","))

    def shows(self, e: dict[str, Any]) -> bool:
        """`matches` for an event as `as_dict` shows it."""
        job = e.get("job")
        if self.job is not None and job != self.job:
            return False
        if self.task is not None and (not job or e.get("task") != self.task):
            return False
        if self.queue is None:
            return True
        return e.get("queue") == self.queue if job else self.queue in (e.get("queues") or ())
