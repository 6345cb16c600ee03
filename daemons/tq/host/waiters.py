"""Waiters: requests answered when a job finishes (`wait`, a wait for many jobs, submit_and_wait), or at
their deadline with a timeout (a wait for many: with the jobs that did finish and those still pending)."""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from dataclasses import dataclass
from typing import Any

from .. import control
from ..control import RequestError
from ..states import FINAL
from .jobs import JobTable
from .records import JobRecord
from .replies import Ledger
from .server import Conn

MAX_BULK = 100_000  # jobs one request may name or touch (a wait for many, a bulk cancel or retry)


@dataclass(slots=True)
class Waiter:
    conn: Conn
    rid: Any
    deadline: float  # monotonic
    answered: bool = False
    finished: list[dict[str, Any]] | None = None  # a wait for many: those finished so far ...
    pending: set[int] | None = None  # ... and those it still waits for


class Waiters:
    def __init__(self, jobs: JobTable, ledger: Ledger) -> None:
        self.jobs, self.ledger = jobs, ledger
        self.waiters: dict[int, list[Waiter]] = collections.defaultdict(list)
        self.deadlines: list[tuple[float, int, int, Waiter]] = []  # heap: (deadline, seq, job id, waiter)
        self._seq = itertools.count()
        self.waiting = 0  # waiters not yet answered (the heap also holds answered ones until they come up)

    def wait_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any] | None:
        """The `wait` op: answer when the job `id` has finished, or when every job of `ids` has (or at the
        timeout, with those that have and the ids `pending`): one request, however many jobs."""
        timeout = float(control.field(req, "timeout", (int, float), 10**9))
        if not timeout >= 0:
            raise RequestError("bad_request", "timeout must be a number of seconds >= 0")
        if req.get("ids") is not None:
            return self._wait_many(conn, rid, req, timeout)
        job_id = control.field(req, "id", int)
        job = self.jobs.find(job_id)
        if job is None:
            raise RequestError("not_found", f"no job {job_id}")
        if job.state in FINAL:
            return {"job": job.public()}
        self.wait(job.id, conn, rid, timeout)
        return None

    def _wait_many(self, conn: Conn, rid: Any, req: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        ids = control.field(req, "ids", list)
        if not 0 < len(ids) <= MAX_BULK or any(type(i) is not int for i in ids):
            raise RequestError("bad_request", f"ids takes from 1 to {MAX_BULK} job ids (integers)")
        finished, pending = [], []
        for job_id in dict.fromkeys(ids):  # each once, in the order given
            job = self.jobs.find(job_id)
            if job is None:
                raise RequestError("not_found", f"no job {job_id}")
            if job.state in FINAL:
                finished.append(job.public())
            else:
                pending.append(job_id)
        if not pending or timeout == 0:
            return {"jobs": finished, "pending": pending}
        self.wait(pending[0], conn, rid, timeout, finished, pending)
        return None

    def wait(self, job_id: int, conn: Conn, rid: Any, timeout: float, many: list[dict[str, Any]] | None = None,
             pending: list[int] | None = None) -> None:
        """Answer `rid` when job `job_id` finishes, or (`many`, the jobs finished already) when all of `pending`
        have; in `timeout` seconds at the latest."""
        w = Waiter(conn, rid, time.monotonic() + max(0.0, timeout))
        if pending is not None:
            w.finished, w.pending = many or [], set(pending)
        for waited in pending or (job_id,):
            self.waiters[waited].append(w)
        self.waiting += 1
        heapq.heappush(self.deadlines, (w.deadline, next(self._seq), job_id, w))

    def on_final(self, job: JobRecord) -> None:
        """A job reached a final state: answer everyone who waits for it."""
        waiting = self.waiters.pop(job.id, None)
        if not waiting:
            return
        public = job.public()
        for w in waiting:
            if w.answered:
                continue
            if w.pending is not None and w.finished is not None:  # a wait for many: answered once all are
                w.finished.append(public)
                w.pending.discard(job.id)
                if w.pending:
                    continue
                reply = {"rid": w.rid, "ok": True, "jobs": w.finished, "pending": []}
            else:
                reply = {"rid": w.rid, "ok": True, "job": public}
            w.answered = True
            self.waiting -= 1
            self.ledger.answer(w.conn, reply, True)

    def expire(self, now: float) -> None:
        """Answer waiters whose time is up with a timeout."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, job_id, w = heapq.heappop(self.deadlines)
            if w.answered:
                continue
            w.answered = True
            self.waiting -= 1
            if w.pending is not None:  # a wait for many: what finished, and what did not
                self.ledger.answer(w.conn, {"rid": w.rid, "ok": True, "jobs": w.finished,
                                            "pending": sorted(w.pending)}, True)
            else:
                self.ledger.refuse(w.conn, w.rid, "timeout", f"job {job_id} did not finish in time")
            self._forget(w, job_id)
        if len(self.deadlines) > 1024 and len(self.deadlines) > 2 * self.waiting:  # mostly answered: drop those
            self.deadlines = [entry for entry in self.deadlines if not entry[3].answered]
            heapq.heapify(self.deadlines)

    def undo(self, next_id: int, refused: set[tuple[int, str]], error: str) -> None:
        """The step's commit failed: the waits of the `refused` requests go, as do those of the jobs the step
        would have created (ids from `next_id` on); a wait for many that named such a job is refused."""
        for job_id in list(self.waiters):
            for w in list(self.waiters.get(job_id, ())):
                if w.answered or (job_id < next_id and (id(w.conn), repr(w.rid)) not in refused):
                    continue
                w.answered = True
                self.waiting -= 1
                self._forget(w, job_id)
                if (id(w.conn), repr(w.rid)) not in refused:  # a wait for many that named a job of this step
                    self.ledger.refuse(w.conn, w.rid, "unavailable", error)

    def _forget(self, w: Waiter, job_id: int = 0) -> None:
        """Take an answered waiter off the lists of the jobs it waited for."""
        for waited in w.pending or (job_id,):
            rest = [x for x in self.waiters.get(waited, ()) if x is not w]
            if rest:
                self.waiters[waited] = rest
            else:
                self.waiters.pop(waited, None)

    def next_deadline(self) -> float | None:
        """The monotonic time of the next waiter's timeout (None: nobody waits)."""
        while self.deadlines and self.deadlines[0][3].answered:  # answered before its time: no wake-up for it
            heapq.heappop(self.deadlines)
        return self.deadlines[0][0] if self.deadlines else None

    def trim(self) -> None:
        self.waiters = collections.defaultdict(list, self.waiters)
