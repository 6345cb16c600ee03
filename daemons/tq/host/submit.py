"""Submit admission: what a submit request becomes, and the jobs tq-host submits itself.

Each job spec is checked (task name, options, size) before any is stored; then links (a chain, `after`),
unique keys and routing through an exchange; a task's follow-ups (`on_success`, `on_failure`) are submitted
when its jobs finish. A task name is resolved once (cached until a reload).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from typing import Any

from .. import config, control, protocol
from ..control import RequestError
from .access import Access
from .jobs import JobTable
from .openjobs import CANCELLED, DEAD, DEFERRED, DELAYED, DONE, QUEUED
from .queues import Queues
from .records import AFTER, CHAIN, FOLLOW_UP, JobRecord
from .replies import Ledger
from .server import Conn
from .waiters import Waiters

PLAIN_SPEC = {"task", "args", "payload"}  # a job spec with no options of its own
MAX_UNIQUE_KEY = 256  # characters of a unique key
MAX_TASKS_CACHED = 10_000  # task names come from clients: never trust their count
# a job runs before the year 10000 (UTC): past it no client can show its time (datetime's and most time_t's end)
LATEST_RUN_AT = 253402300800.0


class Admission:
    def __init__(self, cfg: config.Config, jobs: JobTable, queues: Queues, waiters: Waiters, ledger: Ledger,
                 logger: logging.Logger) -> None:
        self.jobs, self.queues, self.waiters, self.ledger, self.logger = jobs, queues, waiters, ledger, logger
        self.cfg = cfg
        self.access = Access(cfg)
        self.follow_ups = False
        self._task = functools.lru_cache(maxsize=MAX_TASKS_CACHED)(self._resolve_task)
        self.configure(cfg)

    def configure(self, cfg: config.Config) -> None:
        """Take a (reloaded) configuration: task names are resolved afresh."""
        self.cfg = cfg
        self.access = Access(cfg)
        self.follow_ups = any(t.on_success or t.on_failure for t in cfg.tasks)
        self._task = functools.lru_cache(maxsize=MAX_TASKS_CACHED)(self._resolve_task)

    def on_final(self, job: JobRecord) -> None:
        """A job reached a final state (JobTable.on_final): submit its task's follow-up, answer its waiters."""
        if self.follow_ups:
            self.follow_up(job)
        if self.waiters.waiting:
            self.waiters.on_final(job)

    def submit_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
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
            self.waiters.wait(ids[0], conn, rid, float(wait_for))
            self.ledger.await_result()
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
        held = None if not chain or jobs[0].unique_key is None else self.jobs.holder(jobs[0].unique_key)
        if held is not None:  # the open job with the head's key answers for the whole chain: nothing is created
            ids = self.jobs.chain_from(held)
            existing.extend(ids)
            return ids
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
        problem = config.task_name_problem(name)
        if problem is not None:
            raise RequestError("bad_request", problem)
        task = self.cfg.task_for(name)
        if task is None:
            known = ", ".join(t.name for t in self.cfg.tasks) or "(none configured)"
            raise RequestError("unknown_task", f"unknown task {name!r}; known tasks: {known}")
        return sys.intern(name), task, protocol.to_json(task.handler_spec())

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


def _job_options(spec: dict[str, Any], task: config.TaskConfig) -> tuple[str, int, float, float, int]:
    """queue, priority, delay, timeout and retries of a job spec, each checked, the task's by default."""
    queue = control.field(spec, "queue", str, task.queue)
    if not config.NAME_RE.fullmatch(queue):
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
        if not -math.inf < at < LATEST_RUN_AT:  # (before the epoch too: a time past runs at once)
            raise RequestError("bad_request", f"at must be a time in seconds since the epoch, before the year "
                                              f"10000 ({LATEST_RUN_AT:.0f}), not {at}")
        delay = max(0.0, float(at) - time.time())
    if not 0 <= delay < math.inf:
        raise RequestError("bad_request", f"delay must be a number of seconds, 0 or more and finite, not {delay}")
    if delay and time.time() + delay >= LATEST_RUN_AT:  # (no clock read for a job without a delay)
        raise RequestError("bad_request", f"delay {delay:g} runs the job past the year 9999: at most until "
                                          f"{LATEST_RUN_AT:.0f} seconds since the epoch")
    timeout = float(control.field(spec, "timeout", (int, float), task.timeout))
    if not control.MIN_TIMEOUT <= timeout < math.inf:
        raise RequestError("bad_request", f"timeout must be a number of seconds, at least {control.MIN_TIMEOUT} "
                                          f"(1ms) and finite, not {timeout}")
    retries = control.field(spec, "retries", int, task.retries)
    if not 0 <= retries <= config.MAX_RETRIES:
        raise RequestError("bad_request", f"retries must be from 0 to {config.MAX_RETRIES}, not {retries}")
    return queue, priority, delay, timeout, retries


