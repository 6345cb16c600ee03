"""The control operations: each request's handler, and the order of its reply.

A request is one JSON line with an `op`; `ops` maps each op to its handler, which returns the reply body, or
None when it answers later (a wait). Replies go to the ledger (replies.py), held until the step's commit.
Submits are admitted in submit.py, waits answered in waiters.py, the status and metrics read in snapshot.py.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .. import __version__, config, control
from ..control import RequestError
from ..states import JobState
from .access import Access
from .fleet import Fleet
from .jobs import CANCELLABLE, RETRYABLE, InvalidTransition, JobTable, RetryRefused
from .openjobs import ON_WORKER
from .queues import Queues
from .records import MAX_JOB_ID, JobRecord
from .replies import Ledger
from .server import Conn
from .snapshot import Snapshot
from .stream import RECENT, EventStream, Filter
from .submit import Admission
from .tokens import Tokens
from .waiters import MAX_BULK, Waiters

# Replies that acknowledge a change or tell a job's outcome: sent only once the step's commit succeeded, and with
# durability = "full" once every change they may show is fsync'd (Store.commit).
ACKNOWLEDGING_OPS = {"submit", "cancel", "retry", "wait", "get", "list", "pause", "resume", "forget_worker",
                     "token_create", "token_revoke"}
MAX_REASONS = 5  # a bulk retry's reasons for the jobs it refused: the first few
BURST_OPS = {"submit", "list"}  # requests that may allocate much; a poller's status calls do not count
_STATES = frozenset(s.value for s in JobState)
Op = Callable[[Conn, Any, dict[str, Any]], "dict[str, Any] | None"]


class Requests:
    def __init__(self, cfg: config.Config, jobs: JobTable, fleet: Fleet, queues: Queues, stream: EventStream,
                 admission: Admission, waiters: Waiters, ledger: Ledger, snapshot: Snapshot,
                 schedules: Callable[[], list[dict[str, Any]]], tokens: Tokens, logger: logging.Logger) -> None:
        self.jobs, self.fleet, self.queues, self.stream = jobs, fleet, queues, stream
        self.admission, self.waiters, self.ledger, self.snapshot = admission, waiters, ledger, snapshot
        self.schedules, self.tokens, self.logger = schedules, tokens, logger
        self.replies = ledger.replies  # (appended to here: a call less per request than Ledger.answer)
        self.cfg = cfg
        self.access = Access(cfg)
        self.last_burst = 0.0  # monotonic time of the last request that may allocate much
        self.ops: dict[str, Op] = {
            "ping": self._ping, "submit": admission.submit_op, "get": self._get, "wait": waiters.wait_op,
            "list": self._list, "status": snapshot.status, "workers": self._workers, "cancel": self._cancel,
            "retry": self._retry, "pause": self._pause, "resume": self._resume, "queues": self._queues,
            "schedules": self._schedules, "subscribe": self._subscribe, "events": self._events,
            "metrics": self._metrics, "forget_worker": self._forget_worker, **tokens.ops(),
        }

    def configure(self, cfg: config.Config) -> None:
        """Take a (reloaded) configuration."""
        self.cfg = cfg
        self.access = Access(cfg)
        self.admission.configure(cfg)
        self.snapshot.configure(cfg)

    def handle(self, conn: Conn, line: bytes) -> None:
        """One request line: its reply is held until the step's commit (Ledger.take)."""
        rid: Any = None
        try:
            req = control.decode(line)
            rid = req.get("rid")
            op = control.field(req, "op", str)
            if op in BURST_OPS:
                self.last_burst = time.monotonic()
            handler = self.ops.get(op)
            if handler is None:
                raise RequestError("bad_request", f"unknown op {op!r}")
            if conn.token is not None:  # it acts with a token (act_as): revoked, or read-only? (a local one: no)
                self.tokens.check(conn, op)
            reply = handler(conn, rid, req)
            if reply is not None:
                self.replies.append((conn, {"rid": rid, "ok": True, **reply}, op in ACKNOWLEDGING_OPS))
        except RequestError as e:
            if rid is None:  # (decode refused the line: its rid, if it has one, so the client can match the reply)
                rid = control.rid_of(line)
            self.ledger.refuse(conn, rid, e.code, str(e))
        except sqlite3.Error as e:  # the step recovers from store errors; this request is refused
            self.ledger.refuse(conn, rid, "unavailable", str(e))
            raise
        except Exception:  # a bug must cost one request, never the daemon
            self.logger.exception("internal error on request %.200r", line)
            self.ledger.refuse(conn, rid, "internal", "internal error in tq-host (logged)")

    def undo(self, next_id: int, error: str) -> None:
        """The step's commit failed: every reply that depended on it becomes a refusal, and the waits of those
        requests go (a refused request gets that one answer), as do those of the jobs it would have created."""
        refused = self.ledger.refused_by_undo()
        self.waiters.undo(next_id, refused, error)
        self.ledger.undo(refused, error)
        self.tokens.reload()

    # ---- the operations ---------------------------------------------------

    def _lookup(self, req: dict[str, Any]) -> JobRecord:
        job_id = control.field(req, "id", int)
        job = self.jobs.find(job_id)
        if job is None:
            raise RequestError("not_found", f"no job {job_id}")
        return job

    def _ping(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__}

    def _get(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        job = self._lookup(req)
        return {"job": job.public() | {"children": self.jobs.store.children(job.id)}}

    def _list(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        limit = control.field(req, "limit", int, 50)
        after = control.field(req, "after", int, None)  # a job id: the page of the ids below it
        if after is not None and not 0 < after <= MAX_JOB_ID:
            raise RequestError("bad_request", f"after must be a job id (1 to {MAX_JOB_ID})")
        task, queue = _names(req)
        jobs = self.jobs.query(_state(req), queue, task, max(0, min(limit, 100000)), after)
        return {"jobs": [j.public() for j in jobs]}

    def _workers(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"workers": self.fleet.public(time.monotonic())}

    def _forget_worker(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """Drop a worker that is gone (lost or stopped) from `workers` and the status counts. Root and admins."""
        instance = control.field(req, "instance", str)
        refusal = self.access.may_steer(conn.uid, conn.gid, "forget a worker")
        if refusal is not None:
            raise RequestError("permission", refusal)
        w = self.fleet.workers.get(instance)
        if w is None:
            raise RequestError("not_found", f"no worker {instance[:40]!r}")
        if w.state not in ("lost", "stopped"):
            raise RequestError("conflict", f"worker {instance} is {w.state}: only a lost or stopped worker can be "
                                           f"forgotten (stop it first)")
        state = w.state
        self.fleet.forget(instance, f"tqctl workers --forget by uid {conn.uid}")
        return {"instance": instance, "state": state}

    def _cancel(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """One job by `id`, or every job matching the filters; a running job is stopped on its worker first."""
        by = f"by {self.access.who(conn.uid)}"

        def cancel(job: JobRecord) -> bool:
            on_worker = job.state in ON_WORKER  # running: stopped there; assigned: cancelled now, dropped there
            stopping = self.jobs.cancel(job, by)
            if on_worker:
                self.fleet.cancel(job)
            return stopping

        if req.get("id") is not None:
            job = self._lookup(req)
            self._check_change(conn, job, "cancel")
            stopping = _transition(cancel, job)
            return {"job": job.public(), "stopping": stopping}  # (the job as the cancel left it)
        return self._bulk(conn, req, cancel, "cancel", CANCELLABLE)

    def _retry(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("id") is not None:
            job = self._lookup(req)
            self._check_change(conn, job, "retry")
            later = _transition(self.jobs.retry, job)
            return {"job": job.public(), "later": later}
        return self._bulk(conn, req, self.jobs.retry, "retry", RETRYABLE)

    def _check_change(self, conn: Conn, job: JobRecord, what: str) -> None:
        refusal = self.access.may_change(conn.uid, conn.gid, job.submitter, what, job.id)
        if refusal is not None:
            raise RequestError("permission", refusal)

    def _bulk(self, conn: Conn, req: dict[str, Any], action: Callable[[JobRecord], object], what: str,
              able: tuple[str, ...]) -> dict[str, Any]:
        """Apply `action` to every job that matches the request's filters (a retry oldest first: a chain's steps
        in order; a cancel newest first: each by the caller, not by the step before it) and that the caller may
        change; the others are left and counted as refused: `not_yours`, and `reasons` (the first few) for the
        jobs a retry refuses (RetryRefused). A retry's later chain steps that come back with a job are in ids."""
        task, queue = _names(req)
        filters = {"state": _state(req), "task": task, "queue": queue}
        older_than = control.field(req, "older_than", (int, float), None)
        if not any(filters.values()) and older_than is None:
            raise RequestError("bad_request", "give a job id, or at least one filter: state, task, queue, "
                                              "older_than")
        if filters["state"] is not None and filters["state"] not in able:
            verb = "cancelled" if what == "cancel" else "retried"
            raise RequestError("bad_request", f"state {filters['state']}: a {filters['state']} job cannot be "
                                              f"{verb}; the state filter takes {', '.join(able)}")
        newest = time.time() - float(older_than or 0.0)
        ids: list[int] = []
        not_yours, refused, reasons = 0, 0, list[str]()
        matching = self.jobs.query(filters["state"], filters["queue"], filters["task"], MAX_BULK)
        for job in reversed(matching) if what == "retry" else matching:
            if job.created_at > newest:
                continue
            if self.access.may_change(conn.uid, conn.gid, job.submitter, what, job.id) is not None:
                not_yours += 1
                continue
            try:
                later = action(job)
            except RetryRefused as e:
                refused += 1
                if len(reasons) < MAX_REASONS:
                    reasons.append(str(e))
                continue
            except InvalidTransition:
                continue
            ids.append(job.id)
            ids.extend(later if isinstance(later, list) else ())
        return {"count": len(ids), "ids": ids, "refused": refused + not_yours, "not_yours": not_yours,
                "reasons": reasons}

    def _pause(self, conn: Conn, rid: Any, req: dict[str, Any], paused: bool = True) -> dict[str, Any]:
        """Pause (or resume) a queue: submits are taken, nothing is dispatched; running jobs finish."""
        queue = control.field(req, "queue", str)
        if not config.NAME_RE.fullmatch(queue):
            raise RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
        refusal = self.access.may_steer(conn.uid, conn.gid, f"{'pause' if paused else 'resume'} a queue")
        if refusal is not None:
            raise RequestError("permission", refusal)
        if queue not in self.queues.paused and not self.queues.named(queue):
            raise RequestError("not_found", f"no queue {queue}: no task, [queues.NAME], worker, exchange or job "
                                            "names it (tqctl queues lists the queues)")
        changed = self.queues.pause(queue, paused)
        return {"queue": queue, "paused": paused, "changed": changed}

    def _resume(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return self._pause(conn, rid, req, paused=False)

    def _queues(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"queues": self.queues.listing()}

    def _schedules(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"schedules": self.schedules()}

    def _subscribe(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """From now on this connection is sent the events that match the filters, one JSON line each (after this
        reply, which holds up to `recent` of the last events; with `after`, those since then, and what is missing)."""
        f = _event_filter(req)
        recent = max(0, min(control.field(req, "recent", int, 0), RECENT))
        self.stream.subscribe(conn, f)
        return {"subscribed": True, "events": self._past_events(req, f, recent)}

    def _events(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """The last `limit` events (of the last 1000) that match the filters, oldest first; with `after` (a time),
        of those since then (and what is missing, as subscribe says)."""
        limit = max(0, min(control.field(req, "limit", int, RECENT), RECENT))
        return {"events": self._past_events(req, _event_filter(req), limit)}

    def _past_events(self, req: dict[str, Any], f: Filter, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` of the last events that match `f`; with the request's `after` (a time), of those since."""
        after = control.field(req, "after", (int, float), None)
        if after is None:
            return self.stream.recent_events(f, limit)
        return self.stream.since_events(f, float(after), limit)

    def _metrics(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """The snapshot (format "json"), or the Prometheus text written from it here (format "text"): a scrape
        is then one request, and the client library (tq/metrics.py) is imported at the first, once (about 8 MB,
        and 40-50 ms then), not by every `tqctl metrics` process (60 ms of CPU each, half of what a scrape cost)."""
        fmt = control.field(req, "format", str, "json")
        if fmt == "text":
            try:
                from .. import metrics as exposition
            except ImportError as e:  # (the package depends on it; a hand-made venv may lack it)
                raise RequestError("internal", f"tq-host cannot write metrics: the Prometheus client library "
                                   f"is not installed ({e})") from None
            return {"text": exposition.render(self.snapshot.metrics()).decode()}
        if fmt != "json":
            raise RequestError("bad_request", f"format must be json or text, not {fmt[:20]!r}")
        return {"metrics": self.snapshot.metrics()}


def _event_filter(req: dict[str, Any]) -> Filter:
    """The filters of a subscribe or events request: job (an id), task, queue."""
    job = control.field(req, "job", int, None)
    if job is not None and not 0 < job <= MAX_JOB_ID:
        raise RequestError("bad_request", f"job must be a job id (1 to {MAX_JOB_ID})")
    task, queue = _names(req)
    fmt = control.field(req, "format", str, "lines")
    if fmt not in ("lines", "rows"):
        raise RequestError("bad_request", f"format must be lines or rows, not {fmt[:20]!r}")
    rate = control.field(req, "rate", int, None)
    if rate is not None and rate < 1:
        raise RequestError("bad_request", "rate must be at least 1 (events a second)")
    return Filter(job, task, queue, fmt == "rows", rate)


def _names(req: dict[str, Any]) -> tuple[str | None, str | None]:
    """A request's task and queue filters, each a name a job can have (or None): the store is never asked about
    text it cannot hold (a lone surrogate); an empty one is none."""
    task = control.field(req, "task", str, None) or None
    queue = control.field(req, "queue", str, None) or None
    if task is not None and (problem := config.task_name_problem(task)) is not None:
        raise RequestError("bad_request", f"task filter: {problem}")
    if queue is not None and not config.NAME_RE.fullmatch(queue):
        raise RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
    return task, queue


def _state(req: dict[str, Any]) -> str | None:
    state = control.field(req, "state", str, None) or None
    if state is not None and state not in _STATES:
        raise RequestError("bad_request", f"state must be one of {', '.join(JobState)}, not {state[:20]!r}")
    return state


def _transition(action: Callable[[JobRecord], Any], job: JobRecord) -> Any:
    try:
        return action(job)
    except InvalidTransition as e:
        raise RequestError("conflict", str(e)) from None
