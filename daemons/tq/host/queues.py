"""The job queues as an operator steers them: paused or not (kept in the store, so it outlives a restart), the
limits of [queues.NAME] (concurrency, rate), which workers serve each, a warning for a queue that no live worker
serves, and the listing of `tqctl queues`.

A paused queue takes submits and dispatches nothing; its running jobs finish. `concurrency` caps its jobs
running at once across all workers; `rate` spaces its dispatches evenly (a token bucket of one: 10/s is one
job every 100 ms, never a burst of ten). A queue is known (and listed) once a task, a [queues.NAME] table, a
worker (configured or known), an exchange binding, a schedule, a job or a pause names it. Only a named queue may
be paused (`named`): a pause of a typo would be taken and listed forever; a paused queue that is no longer named
may still be resumed, and then it is listed no more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from .. import config, configfiles
from .carriage import not_sent_why
from .fleet import Fleet
from .jobs import JobTable
from .opencounts import OpenCounts
from .store import Store

SERVING = ("live", "syncing")  # a syncing worker (after a restart of either side) is about to serve again
SERVED_TTL = 1.0  # seconds the set of served queues is trusted (a worker lost meanwhile is noticed this late)


class Queues:
    def __init__(self, cfg: config.Config, store: Store, jobs: JobTable, counts: OpenCounts, fleet: Fleet,
                 logger: logging.Logger) -> None:
        self.cfg, self.store, self.jobs, self.counts, self.fleet, self.logger = cfg, store, jobs, counts, fleet, logger
        self.paused: set[str] = set()
        self.unserved: set[str] = set()  # queues warned of: jobs were submitted and no live worker serves them
        self._served: set[str] = set()  # queues served by a live worker, looked up at most every SERVED_TTL
        self._served_at = -SERVED_TTL
        self.next_token: dict[str, float] = {}  # rate-limited queue -> monotonic time it may dispatch again
        self.limited: dict[str, config.QueueConfig] = {}  # queues with a concurrency or rate limit
        self.configure(cfg, said=False)

    def configure(self, cfg: config.Config, said: bool = True) -> None:
        """Take a (reloaded) configuration: its limits apply from the next dispatch, and a changed rate to the
        time of that dispatch too (the last dispatch + 1/new rate: a raised rate does not keep the old wait).
        `said`: log each queue whose limits changed (at a reload)."""
        self.cfg = cfg
        before = self.limited
        self.limited = {name: q for name, q in cfg.queues.items() if q.concurrency is not None or q.rate is not None}
        for name in sorted(set(before) | set(self.limited)) if said else ():
            was, now = _limits(before.get(name)), _limits(self.limited.get(name))
            if was != now:
                self.logger.info("queue %s: limits now %s (were %s)", name, now, was, extra={"TQ_QUEUE": name})
        self.jobs.counting_running(any(q.concurrency is not None for q in self.limited.values()))
        self.next_token = {name: self._retimed(t, before[name].rate, self.limited[name].rate)
                           for name, t in self.next_token.items() if name in self.limited}

    @staticmethod
    def _retimed(token: float, old: float | None, new: float | None) -> float:
        """A queue's next token under its new rate: its last dispatch (the token less the old interval) plus the
        new interval. No rate any more: it may dispatch at once."""
        if new is None:
            return 0.0
        return token if old is None or old == new else token - 1.0 / old + 1.0 / new

    def load(self) -> None:
        """The paused queues, from the store (at start, and after a failed commit: its pauses did not happen)."""
        self.paused = self.store.paused_queues()

    def pause(self, queue: str, paused: bool) -> bool:
        """Pause or resume a queue (staged in the store); False if it already was."""
        if (queue in self.paused) == paused:
            return False
        self.store.set_paused(queue, paused)
        (self.paused.add if paused else self.paused.discard)(queue)
        self.jobs.events.line(logging.INFO, "queue %s %s",  # (said once the store has it: held until the commit)
                              (queue, "paused: its jobs wait until tqctl resume" if paused else "resumed"),
                              {"TQ_QUEUE": queue})
        return True

    def named(self, queue: str) -> bool:
        """True if the configuration names the queue (a task's, a [queues.NAME] table, a worker's queues, an
        exchange binding, a schedule's), or a known worker serves it, or it has jobs (open or in the store)."""
        if queue in self._known():
            return True
        return bool(self.store.query(queue=queue, limit=1))  # (a rare operator's request: a scan is fine)

    def _known(self) -> set[str]:
        """The queues the configuration names (a task's, a [queues.NAME] table, a worker's queues, an exchange
        binding, a schedule's) and those a known worker serves."""
        cfg = self.cfg
        return ({*cfg.queues, *(t.queue for t in cfg.tasks), *(s.queue for s in cfg.schedules.values() if s.queue),
                 *(q for w in (cfg.worker, *cfg.worker_overrides.values()) for q in w.queues),
                 *(b.queue for e in cfg.exchanges.values() for b in e.bindings),
                 *(q for w in self.fleet.workers.values() for q in w.queues)})

    def open_of(self, queues: list[str], now: float) -> list[str]:
        """Of a worker's queues, those that may dispatch now: not paused, and within their limits."""
        if not self.paused and not self.limited:
            return queues
        return [q for q in queues if q not in self.paused and (q not in self.limited or self._within(q, now))]

    def _within(self, queue: str, now: float) -> bool:
        limit = self.limited[queue]
        if limit.concurrency is not None and self.jobs.running_in[queue] >= limit.concurrency:
            return False
        return limit.rate is None or now >= self.next_token.get(queue, 0.0)

    def dispatched(self, queue: str, now: float) -> bool:
        """A job of `queue` was dispatched: True if the queue is limited (its worker's open queues change)."""
        limit = self.limited.get(queue)
        if limit is None:
            return False
        if limit.rate is not None:
            self.next_token[queue] = max(now, self.next_token.get(queue, 0.0)) + 1.0 / limit.rate
        return True

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until a rate-limited queue with ready jobs may dispatch again (None: none waits for that)."""
        due = [t for q, t in self.next_token.items() if t > now and self.jobs.ready.get(q)]
        return min(due) - now if due else None

    def served_by(self, queue: str) -> list[str]:
        return sorted(w.instance for w in self.fleet.workers.values() if w.state in SERVING and queue in w.queues)

    def submitted(self, queues: Iterable[str]) -> None:
        """Jobs were submitted to these queues: warn once of each that no live worker serves (a typo in a queue
        name must not look like a slow queue). Served again, it is warned of again the next time it is not."""
        now = time.monotonic()
        if now - self._served_at >= SERVED_TTL:  # (a submit per job must not walk every worker)
            self._served = {q for w in self.fleet.workers.values() if w.state in SERVING for q in w.queues}
            self._served_at = now
        for queue in queues:
            if queue in self._served and queue not in self.unserved:
                continue
            served = any(w.state in SERVING and queue in w.queues for w in self.fleet.workers.values())
            if served:
                self.unserved.discard(queue)
            elif queue not in self.unserved:
                self.unserved.add(queue)
                self.logger.warning("queue %s: no live worker serves it; its jobs wait until one does (%s)", queue,
                                    self._why_unserved(queue), extra={"TQ_QUEUE": queue})

    def _why_unserved(self, queue: str) -> str:
        """The setting to look at for a queue no live worker serves: tq-host's amqp.queues when a live worker
        names it but its transport does not carry it (carriage.py), else the workers' own queues."""
        named_by = sorted(w.instance for w in self.fleet.workers.values()
                          if w.state in SERVING and queue in w.not_sent)
        if named_by:
            return f"worker(s) {','.join(named_by)} name it, but {not_sent_why(named_by[0])}"
        return "a worker serves the queues of [worker] queues; tqctl queues lists them all"

    def listing(self, periodic: bool = False) -> list[dict[str, Any]]:
        """Every known queue: its open jobs by state, the age of its oldest queued job, paused or not, and which
        worker instances serve it. `periodic`: for a reader that asks again and again (metrics), which may be given
        a recent count of the open jobs (opencounts.OpenCounts)."""
        open_jobs = self.counts.recent() if periodic else self.counts.now()
        names = set(open_jobs) | self.paused | self._known()
        now = time.time()
        out = []
        for name in sorted(names):
            counts, oldest = open_jobs.get(name) or ({}, None)
            served_by = self.served_by(name)
            limit = self.limited.get(name)
            out.append({"queue": name, "paused": name in self.paused, "states": dict(counts),
                        "concurrency": limit.concurrency if limit else None, "rate": limit.rate if limit else None,
                        "oldest_queued_age": None if oldest is None else round(now - oldest, 3),
                        "workers": served_by, "unserved": not served_by and bool(counts)})
        return out


def _limits(limit: config.QueueConfig | None) -> str:
    """A queue's limits in words: "2 at once, 1/h", or "none"."""
    if limit is None:
        return "none"
    words = [f"{limit.concurrency} at once"] if limit.concurrency is not None else []
    if limit.rate is not None:
        words.append(configfiles.rate_text(limit.rate))
    return ", ".join(words)
