"""The job queues as an operator steers them: paused or not (kept in the store, so it outlives a restart), which
workers serve each, a warning for a queue that no live worker serves, and the listing of `tqctl queues`.

A paused queue takes submits and dispatches nothing; its running jobs finish. A queue is known once a task,
a [queues.NAME] table, a worker, a job or a pause names it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from .. import config
from ..store import Store
from .fleet import Fleet
from .jobs import JobTable

SERVING = ("live", "syncing")  # a syncing worker (after a restart of either side) is about to serve again
SERVED_TTL = 1.0  # seconds the set of served queues is trusted (a worker lost meanwhile is noticed this late)


class Queues:
    def __init__(self, cfg: config.Config, store: Store, jobs: JobTable, fleet: Fleet,
                 logger: logging.Logger) -> None:
        self.cfg, self.store, self.jobs, self.fleet, self.logger = cfg, store, jobs, fleet, logger
        self.paused: set[str] = set()
        self.unserved: set[str] = set()  # queues warned of: jobs were submitted and no live worker serves them
        self._served: set[str] = set()  # queues served by a live worker, looked up at most every SERVED_TTL
        self._served_at = -SERVED_TTL

    def load(self) -> None:
        """The paused queues, from the store (at start, and after a failed commit)."""
        self.paused = self.store.paused_queues()

    def pause(self, queue: str, paused: bool) -> bool:
        """Pause or resume a queue (staged in the store); False if it already was."""
        if (queue in self.paused) == paused:
            return False
        self.store.set_paused(queue, paused)
        (self.paused.add if paused else self.paused.discard)(queue)
        self.logger.info("queue %s %s", queue, "paused: its jobs wait until tqctl resume" if paused else "resumed")
        return True

    def open_of(self, queues: list[str]) -> list[str]:
        """Of a worker's queues, those not paused (the dispatcher takes jobs from these only)."""
        return [q for q in queues if q not in self.paused] if self.paused else queues

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
                self.logger.warning("queue %s: no live worker serves it; its jobs wait until one does (a worker "
                                    "serves the queues of [worker] queues; tqctl queues lists them all)", queue)

    def listing(self) -> list[dict[str, Any]]:
        """Every known queue: its open jobs by state, the age of its oldest queued job, paused or not, and which
        worker instances serve it."""
        open_jobs = self.jobs.by_queue()
        names = (set(open_jobs) | self.paused | set(self.cfg.queues) | {t.queue for t in self.cfg.tasks}
                 | {q for w in self.fleet.workers.values() for q in w.queues})
        now = time.time()
        out = []
        for name in sorted(names):
            counts, oldest = open_jobs.get(name) or ({}, None)
            served_by = self.served_by(name)
            out.append({"queue": name, "paused": name in self.paused, "states": dict(counts),
                        "oldest_queued_age": None if oldest is None else round(now - oldest, 3),
                        "workers": served_by, "unserved": not served_by and bool(counts)})
        return out
