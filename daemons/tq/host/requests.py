"""The control operations: what each request does, and the waiters that answer when a job finishes.

A request is one JSON line with an `op`; OPS maps each op to its handler, which
returns the reply body, or None when it answers later (a wait). Replies are
held until the step's commit: one that depends on the commit (a submit, cancel
or retry) is turned into a refusal if the commit fails.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__, config, control, protocol
from ..control import RequestError
from ..log import Burst
from ..states import FINAL, JobState
from .access import Access
from .fleet import Fleet
from .jobs import CANCELLED, DEAD, DEFERRED, DELAYED, DONE, QUEUED, InvalidTransition, JobTable
from .queues import Queues
from .server import Conn
from .stats import Stats
from .store import AFTER, CHAIN, FOLLOW_UP, JobRecord
from .stream import RECENT, EventStream, Filter

# Replies that acknowledge a change or tell a job's outcome: sent only once the step's commit succeeded, and with
# durability = "full" once every change they may show is fsync'd (Store.commit).
ACKNOWLEDGING_OPS = {"submit", "cancel", "retry", "wait", "get", "list", "pause", "resume"}
BURST_OPS = {"submit", "list"}  # requests that may allocate much; a poller's status calls do not count
PLAIN_SPEC = {"task", "args", "payload"}  # a job spec with no options of its own
MAX_UNIQUE_KEY = 256  # characters of a unique key
MAX_TASKS_CACHED = 10_000  # task names come from clients: never trust their count
MAX_BULK = 100_000  # jobs one bulk cancel or retry looks at
Reply = tuple[Conn, dict[str, Any], bool]  # connection, reply, whether it depends on this step's commit


@dataclass(slots=True)
class Waiter:
    conn: Conn
    rid: Any
    deadline: float  # monotonic
    answered: bool = False
    finished: list[dict[str, Any]] | None = None  # a wait for many jobs: those finished so far ...
    pending: set[int] | None = None  # ... and those it still waits for


class Requests:
    def __init__(self, cfg: config.Config, jobs: JobTable, fleet: Fleet, queues: Queues, malformed: Burst) -> None:
        self.jobs, self.fleet, self.queues, self.malformed = jobs, fleet, queues, malformed
        self.logger = fleet.logger
        self.replies: list[Reply] = []
        self.waiters: dict[int, list[Waiter]] = collections.defaultdict(list)
        self.deadlines: list[tuple[float, int, int, Waiter]] = []  # heap: (deadline, seq, job id, waiter)
        self._seq = itertools.count()
        self.waiting = 0  # waiters not yet answered (the heap also holds answered ones until they come up)
        self.started = time.time()
        self.last_burst = 0.0  # monotonic time of the last request that may allocate much
        self.result_awaited = False  # a submit of this step waits for its job's result (submit_and_wait)
        self.queue_notes: list[str] = []  # where the mailboxes grant less than [mqueue] asks (Mailboxes.notes)
        self.schedules: Callable[[], list[dict[str, Any]]] = list  # the schedules for tqctl (set by tq-host)
        self.metrics: Callable[[], dict[str, Any]] = dict  # the metrics' snapshot (set by tq-host)
        self.stream: EventStream
        self.stats: Stats
        self.configure(cfg)
        jobs.on_final = self.on_final

    def configure(self, cfg: config.Config) -> None:
        """Take a (reloaded) configuration: task names are resolved afresh."""
        self.cfg = cfg
        self.access = Access(cfg)
        self.follow_ups = any(t.on_success or t.on_failure for t in cfg.tasks)
        self._task = functools.lru_cache(maxsize=MAX_TASKS_CACHED)(self._resolve_task)

    def handle(self, conn: Conn, line: bytes) -> None:
        """One request line: its reply is held until the step's commit (see take_replies)."""
        rid: Any = None
        try:
            req = control.decode(line)
            rid = req.get("rid")
            op = control.field(req, "op", str)
            if op in BURST_OPS:
                self.last_burst = time.monotonic()
            handler = OPS.get(op)
            if handler is None:
                raise RequestError("bad_request", f"unknown op {op!r}")
            reply = handler(self, conn, rid, req)
            if reply is not None:
                self.replies.append((conn, {"rid": rid, "ok": True, **reply}, op in ACKNOWLEDGING_OPS))
        except RequestError as e:
            self._refuse(conn, rid, e.code, str(e))
        except sqlite3.Error as e:  # the step recovers from store errors; this request is refused
            self._refuse(conn, rid, "unavailable", str(e))
            raise
        except Exception:  # a bug must cost one request, never the daemon
            self.logger.exception("internal error on request %.200r", line)
            self._refuse(conn, rid, "bad_request", "internal error in tq-host (logged)")

    def _refuse(self, conn: Conn, rid: Any, code: str, error: str) -> None:
        self.replies.append((conn, {"rid": rid, "ok": False, "code": code, "error": error}, False))

    def acknowledging(self) -> bool:
        """Whether a reply decided this step acknowledges a change (a submit, a cancel, a finished wait): the
        step's commit must then be durable before it is sent."""
        return any(durable for _conn, _reply, durable in self.replies)

    def take_replies(self) -> list[tuple[Conn, dict[str, Any]]]:
        """The replies decided since the last call, to send now that the step's commit succeeded."""
        replies = [(conn, reply) for conn, reply, _durable in self.replies]
        self.replies.clear()
        self.result_awaited = False
        return replies

    def undo(self, next_id: int, error: str) -> None:
        """The step's commit failed: every reply that depended on it becomes a refusal, and the waits of those
        requests go (a refused request gets that one answer), as do those of the jobs it would have created."""
        refused = {(id(c), repr(r.get("rid"))) for c, r, durable in self.replies if durable}
        for job_id in list(self.waiters):
            for w in list(self.waiters.get(job_id, ())):
                if w.answered or (job_id < next_id and (id(w.conn), repr(w.rid)) not in refused):
                    continue
                w.answered = True
                self.waiting -= 1
                self._forget(w, job_id)
                if (id(w.conn), repr(w.rid)) not in refused:  # a wait for many that named a job of this step
                    self._refuse(w.conn, w.rid, "unavailable", error)
        self.replies = [(c, {"rid": r.get("rid"), "ok": False, "code": "unavailable", "error": error}, False)
                        if durable else (c, r, False) for c, r, durable in self.replies
                        if durable or (id(c), repr(r.get("rid"))) not in refused]

    # ---- waiters ----------------------------------------------------------

    def _wait(self, job_id: int, conn: Conn, rid: Any, timeout: float, many: list[dict[str, Any]] | None = None,
              pending: list[int] | None = None) -> None:
        """Answer `rid` when job `job_id` finishes, or (`many`, the jobs finished already) when all of `pending`
        have."""
        w = Waiter(conn, rid, time.monotonic() + max(0.0, timeout))
        if pending is not None:
            w.finished, w.pending = many or [], set(pending)
        for waited in pending or (job_id,):
            self.waiters[waited].append(w)
        self.waiting += 1
        heapq.heappush(self.deadlines, (w.deadline, next(self._seq), job_id, w))

    def on_final(self, job: JobRecord) -> None:
        """A job reached a final state: submit its task's follow-up, answer everyone who waits for it."""
        self.follow_up(job)
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
            self.replies.append((w.conn, reply, True))

    def expire(self, now: float) -> None:
        """Answer waiters whose time is up with a timeout."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, job_id, w = heapq.heappop(self.deadlines)
            if w.answered:
                continue
            w.answered = True
            self.waiting -= 1
            if w.pending is not None:  # a wait for many: what finished, and what did not
                self.replies.append((w.conn, {"rid": w.rid, "ok": True, "jobs": w.finished,
                                              "pending": sorted(w.pending)}, True))
            else:
                self._refuse(w.conn, w.rid, "timeout", f"job {job_id} did not finish in time")
            self._forget(w, job_id)
        if len(self.deadlines) > 1024 and len(self.deadlines) > 2 * self.waiting:  # mostly answered: drop those
            self.deadlines = [entry for entry in self.deadlines if not entry[3].answered]
            heapq.heapify(self.deadlines)

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

    # ---- submit -----------------------------------------------------------

    def _submit(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """Store the jobs; with `wait_for` (seconds, one job) answer twice: the ids now, the job when finished."""
        specs = control.field(req, "jobs", list)
        wait_for = control.field(req, "wait_for", (int, float), None)
        chain = False
        if "exchange" in req or "chain" in req:  # (a plain submit has neither: no lookups on its way)
            if req.get("exchange") is not None:
                specs = self._route(req, specs, wait_for)
            chain = control.field(req, "chain", bool, False)
        if chain and (len(specs) < 2 or wait_for is not None):
            raise RequestError("bad_request", "a chain takes two jobs or more, and no wait_for (wait for its last id)")
        if wait_for is not None and (len(specs) != 1 or not 0 <= wait_for < math.inf):
            raise RequestError("bad_request", "wait_for takes one job and a finite number of seconds")
        jobs = [self._new_job(spec, conn.uid) for spec in specs]  # validate all before storing any
        if self.cfg.queues:
            for queue in {job.queue for job in jobs}:
                refusal = self.access.may_submit(conn.uid, conn.gid, queue)
                if refusal is not None:
                    raise RequestError("permission", refusal)
        detail = f"by uid {conn.uid}"
        existing: list[int] = []
        if chain or (jobs[0].parent is not None or jobs[0].unique_key is not None if len(jobs) == 1 else
                     any(job.parent is not None or job.unique_key is not None for job in jobs)):
            ids = self._add_linked(jobs, chain, detail, existing)
        else:  # the common case, kept lean: a submit per job from a single producer goes through here
            ids = [self.jobs.add(job, detail) for job in jobs]
        self.queues.submitted((jobs[0].queue,) if len(jobs) == 1 else {job.queue for job in jobs})
        reply: dict[str, Any] = {"ids": ids, "existing": existing} if existing else {"ids": ids}
        if wait_for is not None:  # the waiter's answer follows this one (see on_final, expire)
            self._wait(ids[0], conn, rid, float(wait_for))
            self.result_awaited = True
            reply["more"] = True
        return reply

    def _add_linked(self, jobs: list[JobRecord], chain: bool, detail: str, existing: list[int]) -> list[int]:
        """Add jobs of which some wait for another (a chain, after) or have a unique key; `existing` gets the ids
        of open jobs that answered for a unique key."""
        for i, job in enumerate(jobs):  # every check before the first job is added
            if chain and i:  # the next step of the chain: after the one before, with its result as payload
                if job.unique_key is not None or job.parent is not None:
                    raise RequestError("bad_request", "a chain's later steps take no unique key and no after")
                job.link, job.state, job.run_at = CHAIN, DEFERRED, None
            elif job.parent is not None:
                self._after(job)
        ids: list[int] = []
        for job in jobs:
            if job.link == CHAIN:
                job.parent = ids[-1]
            held = None if job.unique_key is None else self.jobs.holder(job.unique_key)
            if held is not None:  # coalesced: the open job with this key answers for it, nothing is created
                ids.append(held.id)
                existing.append(held.id)
            else:
                ids.append(self.jobs.add(job, detail))
        return ids

    def _route(self, req: dict[str, Any], specs: list[Any], wait_for: Any) -> list[Any]:
        """A submit through an exchange: its one job, once for each bound queue that the routing key matches."""
        name = control.field(req, "exchange", str)
        key = control.field(req, "key", str, "")
        exchange = self.cfg.exchanges.get(name)
        if exchange is None:
            known = ", ".join(sorted(self.cfg.exchanges)) or "none configured"
            raise RequestError("bad_request", f"unknown exchange {name[:60]!r} (exchanges: {known})")
        if len(specs) != 1 or not isinstance(specs[0], dict) or "queue" in specs[0] or wait_for is not None:
            raise RequestError("bad_request", "a submit through an exchange takes one job, without a queue (the "
                                              "bindings choose) and without wait_for (wait for its ids instead)")
        queues = exchange.route(key)
        if not queues:
            raise RequestError("bad_request", f"exchange {name}: routing key {key[:100]!r} matches no binding; "
                                              "nothing was submitted")
        return [{**specs[0], "queue": queue} for queue in queues]

    def _after(self, job: JobRecord) -> None:
        """A job submitted --after another: deferred while that one is open, queued if it is done."""
        parent = self.jobs.find(job.parent or 0)
        if parent is None:
            raise RequestError("not_found", f"no job {job.parent} (after)")
        if parent.state in (DEAD, CANCELLED):
            raise RequestError("conflict", f"job {parent.id} is {parent.state}: a job after it would never run")
        if parent.state != DONE:
            job.state, job.run_at = DEFERRED, None  # (a delay or time counts from its submit, not its parent)

    def submit_internal(self, spec: dict[str, Any], detail: str, parent: int | None = None,
                        link: int | None = None) -> JobRecord:
        """A job that tq-host submits itself (a schedule's run, a follow-up of `parent`), checked as a submit of
        root's; RequestError if refused."""
        job = self._new_job(spec, 0)
        job.parent, job.link = parent, link
        self.jobs.add(job, detail)
        self.queues.submitted((job.queue,))
        return job

    def _new_job(self, spec: Any, uid: int) -> JobRecord:
        """A job from a submit request's spec, checked; RequestError says what is wrong with it.

        The hot path of a batch: a task name seen before skips its checks, a spec with no options takes
        the task's settings as they are (the config checked them).
        """
        if not isinstance(spec, dict):
            raise RequestError("bad_request", "each job is an object")
        name = spec.get("task")
        if type(name) is not str:
            name = control.field(spec, "task", str)  # raises: absent, null or not a string
        name, task, handler_json = self._task(name)
        unique_key = None
        plain = spec.keys() <= PLAIN_SPEC
        if plain:
            queue, priority, delay, timeout, retries = task.queue, task.priority, 0.0, task.timeout, task.retries
        else:
            queue, priority, delay, timeout, retries = _job_options(spec, task)
            unique_key = control.field(spec, "unique", str, None)
            if unique_key is not None and not 0 < len(unique_key) <= MAX_UNIQUE_KEY:
                raise RequestError("bad_request", f"a unique key has 1 to {MAX_UNIQUE_KEY} characters")
        args = spec.get("args")
        if type(args) is not list:
            args = control.field(spec, "args", list, [])  # absent or null: none; anything else is refused
        payload = spec.get("payload")
        args_json, payload_json = protocol.to_json(args), None if payload is None else protocol.to_json(payload)
        if unique_key is None and task.unique:
            unique_key = f"{name} {args_json}"  # the task and its args
        after = None if plain else control.field(spec, "after", int, None)
        size = protocol.job_size(name, queue, args_json, payload_json, handler_json)
        limit = self.cfg.mqueue.max_message_size
        if size > limit:
            raise RequestError("too_large", f"job {name!r} is too large: its message is {size} bytes; "
                                            f"mqueue.max_message_size is {limit} bytes")
        now = time.time()
        return JobRecord(0, name, args_json, payload_json, queue, priority, DELAYED if delay > 0 else QUEUED, 0,
                         retries, timeout, task.backoff, task.backoff_max, now + delay if delay > 0 else None, None,
                         None, None, uid, now, None, None, handler_json, None,
                         unique_key, after, None if after is None else AFTER)  # positional: the fields in order

    def _resolve_task(self, name: str) -> tuple[str, config.TaskConfig, str]:
        """A task name, checked, with its task and how to run it (cached: the name interned, one string for all
        its jobs)."""
        if not config.TASK_NAME_RE.fullmatch(name):
            raise RequestError("bad_request", f"invalid task name {name[:60]!r} (dot-separated words of "
                                              "letters, digits, _ - :)")
        task = self.cfg.task_for(name)
        if task is None:
            known = ", ".join(t.name for t in self.cfg.tasks) or "(none configured)"
            raise RequestError("unknown_task", f"unknown task {name!r}; known tasks: {known}")
        return sys.intern(name), task, protocol.to_json(task.handler_spec())

    # ---- the other operations ---------------------------------------------

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

    def follow_up(self, job: JobRecord) -> None:
        """A job finished: submit its task's on_success (done) or on_failure (dead) job, with the job's id, state,
        result and error as payload. A follow-up job has none of its own (no loop of follow-ups)."""
        if not self.follow_ups or job.link == FOLLOW_UP or job.state not in (DONE, DEAD):
            return
        task = self.cfg.task_for(job.task)
        follow = task and (task.on_success if job.state == DONE else task.on_failure)
        if not follow:
            return
        spec = {"task": follow, "payload": {"id": job.id, "task": job.task, "state": job.state,
                                            "result": job.result, "error": job.error}}
        what = "on_success" if job.state == DONE else "on_failure"
        try:
            self.submit_internal(spec, f"as {what} of job {job.id}", job.id, FOLLOW_UP)
        except RequestError as e:
            self.logger.error("job %d: its %s task %s was not submitted: %s", job.id, what, follow, e)

    def _wait_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any] | None:
        """Answer when the job `id` has finished, or when every job of `ids` has (or at the timeout, with
        those that have and the ids `pending`): one request, however many jobs."""
        timeout = float(control.field(req, "timeout", (int, float), 10**9))
        if not timeout >= 0:
            raise RequestError("bad_request", "timeout must be a number of seconds >= 0")
        if req.get("ids") is not None:
            return self._wait_many(conn, rid, req, timeout)
        job = self._lookup(req)
        if job.state in FINAL:
            return {"job": job.public()}
        self._wait(job.id, conn, rid, timeout)
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
        self._wait(pending[0], conn, rid, timeout, finished, pending)
        return None

    def _list(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        limit = control.field(req, "limit", int, 50)
        jobs = self.jobs.query(control.field(req, "state", str, None), control.field(req, "queue", str, None),
                               control.field(req, "task", str, None), max(0, min(limit, 100000)))
        return {"jobs": [j.public() for j in jobs]}

    def _status(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid(), "uptime": round(time.time() - self.started, 3),
                "states": {s.value: self.jobs.counts[s] for s in JobState}, "workers_live": self.fleet.live(),
                "workers_known": len(self.fleet.workers), "malformed_messages": self.malformed.total,
                "config": list(self.cfg.files), "mqueue": {"max_messages": self.fleet.mq.max_messages,
                                                           "max_message_size": self.cfg.mqueue.max_message_size,
                                                           "limited": self.queue_notes}}

    def _workers(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"workers": self.fleet.public(time.monotonic())}

    def _cancel(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """One job by `id`, or every job matching the filters; a running job is stopped on its worker first."""
        def cancel(job: JobRecord) -> bool:
            stopping = self.jobs.cancel(job)
            if stopping:
                self.fleet.cancel(job)
            return stopping

        if req.get("id") is not None:
            job = self._lookup(req)
            self._check_change(conn, job, "cancel")
            return {"job": job.public(), "stopping": _transition(cancel, job)}
        return self._bulk(conn, req, cancel, "cancel")

    def _retry(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("id") is not None:
            job = self._lookup(req)
            self._check_change(conn, job, "retry")
            _transition(self.jobs.retry, job)
            return {"job": job.public()}
        return self._bulk(conn, req, self.jobs.retry, "retry")

    def _check_change(self, conn: Conn, job: JobRecord, what: str) -> None:
        refusal = self.access.may_change(conn.uid, conn.gid, job.submitter, what, job.id)
        if refusal is not None:
            raise RequestError("permission", refusal)

    def _bulk(self, conn: Conn, req: dict[str, Any], action: Callable[[JobRecord], object],
              what: str) -> dict[str, Any]:
        """Apply `action` to every job that matches the request's filters and that the caller may change (the
        others are left, and counted as refused)."""
        filters = {name: control.field(req, name, str, None) for name in ("state", "task", "queue")}
        older_than = control.field(req, "older_than", (int, float), None)
        if not any(filters.values()) and older_than is None:
            raise RequestError("bad_request", "give a job id, or at least one filter: state, task, queue, "
                                              "older_than")
        newest = time.time() - float(older_than or 0.0)
        ids, refused = [], 0
        for job in self.jobs.query(filters["state"], filters["queue"], filters["task"], MAX_BULK):
            if job.created_at > newest:
                continue
            if self.access.may_change(conn.uid, conn.gid, job.submitter, what, job.id) is not None:
                refused += 1
                continue
            try:
                action(job)
            except InvalidTransition:
                continue
            ids.append(job.id)
        return {"count": len(ids), "ids": ids, "refused": refused}


    def _pause(self, conn: Conn, rid: Any, req: dict[str, Any], paused: bool = True) -> dict[str, Any]:
        """Pause (or resume) a queue: submits are taken, nothing is dispatched; running jobs finish."""
        queue = control.field(req, "queue", str)
        if not config.NAME_RE.match(queue):
            raise RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
        refusal = self.access.may_steer(conn.uid, conn.gid, f"{'pause' if paused else 'resume'} a queue")
        if refusal is not None:
            raise RequestError("permission", refusal)
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
        reply, which holds up to `recent` of the last events)."""
        f = _event_filter(req)
        recent = control.field(req, "recent", int, 0)
        self.stream.subscribe(conn, f)
        return {"subscribed": True, "events": self.stream.recent_events(f, max(0, min(recent, RECENT)))}

    def _events(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """The last `limit` events (of the last 1000) that match the filters, oldest first."""
        limit = control.field(req, "limit", int, RECENT)
        return {"events": self.stream.recent_events(_event_filter(req), max(0, min(limit, RECENT)))}

    def _metrics(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """The snapshot (format "json"), or the Prometheus text written from it here (format "text"): a scrape
        is then one request, and the client library (tq/metrics.py) is imported at the first, once (about 8 MB,
        and 40-50 ms then), not by every `tqctl metrics` process (60 ms of CPU each, half of what a scrape cost)."""
        fmt = control.field(req, "format", str, "json")
        if fmt == "text":
            try:
                from .. import metrics as exposition
            except ImportError as e:  # (the package depends on it; a hand-made venv may lack it)
                raise RequestError("bad_request", f"tq-host cannot write metrics: the Prometheus client library "
                                   f"is not installed ({e})") from None
            return {"text": exposition.render(self.metrics()).decode()}
        if fmt != "json":
            raise RequestError("bad_request", f"format must be json or text, not {fmt[:20]!r}")
        return {"metrics": self.metrics()}


Op = Callable[[Requests, Conn, Any, dict[str, Any]], "dict[str, Any] | None"]
OPS: dict[str, Op] = {
    "ping": Requests._ping, "submit": Requests._submit, "get": Requests._get, "wait": Requests._wait_op,
    "list": Requests._list, "status": Requests._status, "workers": Requests._workers,
    "cancel": Requests._cancel, "retry": Requests._retry, "pause": Requests._pause, "resume": Requests._resume,
    "queues": Requests._queues, "schedules": Requests._schedules, "subscribe": Requests._subscribe,
    "events": Requests._events, "metrics": Requests._metrics,
}


def _event_filter(req: dict[str, Any]) -> Filter:
    """The filters of a subscribe or events request: job (an id), task, queue."""
    job = control.field(req, "job", int, None)
    task = control.field(req, "task", str, None)
    queue = control.field(req, "queue", str, None)
    if job is not None and job < 1:
        raise RequestError("bad_request", "job must be a job id (1 or more)")
    if task is not None and not config.TASK_NAME_RE.fullmatch(task):
        raise RequestError("bad_request", f"invalid task name {task[:60]!r}")
    if queue is not None and not config.NAME_RE.match(queue):
        raise RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
    return Filter(job, task, queue)


def _job_options(spec: dict[str, Any], task: config.TaskConfig) -> tuple[str, int, float, float, int]:
    """queue, priority, delay, timeout and retries of a job spec, each checked, the task's by default."""
    queue = control.field(spec, "queue", str, task.queue)
    if not config.NAME_RE.match(queue):
        raise RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
    priority = control.field(spec, "priority", int, task.priority)
    if not config.PRIORITY_MIN <= priority <= config.PRIORITY_MAX:
        raise RequestError("bad_request", f"priority must be between {config.PRIORITY_MIN} and "
                                          f"{config.PRIORITY_MAX}")
    delay = float(control.field(spec, "delay", (int, float), 0.0))
    at = control.field(spec, "at", (int, float), None)  # seconds since the epoch; one in the past runs now
    if at is not None:
        if delay:
            raise RequestError("bad_request", "give delay or at, not both")
        if not 0 <= at < math.inf:
            raise RequestError("bad_request", "at must be a time in seconds since the epoch")
        delay = max(0.0, float(at) - time.time())
    timeout = float(control.field(spec, "timeout", (int, float), task.timeout))
    retries = control.field(spec, "retries", int, task.retries)
    if not (0 <= delay < math.inf and 0 < timeout < math.inf and retries >= 0):
        raise RequestError("bad_request", "delay and retries must be >= 0 and timeout > 0, all finite")
    return queue, priority, delay, timeout, retries


def _transition(action: Callable[[JobRecord], Any], job: JobRecord) -> Any:
    try:
        return action(job)
    except InvalidTransition as e:
        raise RequestError("conflict", str(e)) from None
