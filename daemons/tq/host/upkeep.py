"""tq-host's upkeep between requests: the retention policy applied in small bites, and the memory of a burst
given back once the host has been idle for a second. The loop step calls both every time; each costs a
comparison while there is nothing to do.
"""

from __future__ import annotations

import ctypes
import gc
import time

from .. import config
from .fleet import Fleet
from .jobs import JobTable
from .requests import Requests
from .waiters import Waiters

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")  # malloc_trim: glibc only
except OSError:
    _libc = None
PRUNE_BATCH = 1000  # finished jobs deleted per loop step while the store is over its retention policy
PRUNE_INTERVAL = 60.0  # seconds between retention checks once caught up
IDLE_TRIM = 1.0  # seconds without requests or results before the memory of a burst is given back


class Upkeep:
    def __init__(self, cfg: config.Config, jobs: JobTable, waiters: Waiters, requests: Requests,
                 fleet: Fleet) -> None:
        self.cfg, self.jobs, self.waiters, self.requests, self.fleet = cfg, jobs, waiters, requests, fleet
        self.next_prune = 0.0  # monotonic time of the next retention check
        self.last_trim = 0.0  # monotonic time the memory was last trimmed
        self.started_work = 0.0  # recovery allocates too: trim a second after start

    def configure(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def began(self, now: float) -> None:
        """tq-host has recovered its jobs (at `now`, monotonic)."""
        self.started_work = now

    def prune(self, now: float) -> None:
        """Apply the retention policy in small bites, so that no step stalls for long."""
        h = self.cfg.host
        excess = self.jobs.finished() - h.retain_count
        if now >= self.next_prune:
            deleted = self.jobs.prune(time.time() - h.retain_age, excess, PRUNE_BATCH)
            # Checking ages means reading PRUNE_BATCH jobs from the oldest on: at most every 60 s once caught up
            # (sooner for a short retain_age).
            self.next_prune = now + (min(PRUNE_INTERVAL, h.retain_age / 10) if deleted < PRUNE_BATCH else 0.0)
        elif excess > 0 and excess >= min(PRUNE_BATCH, max(1, h.retain_count // 1000)):
            # Over retain_count between the checks: once the store is full, each finished job is one too many.
            # They go in batches of 0.1 % of retain_count (at most PRUNE_BATCH), and only the excess is read:
            # with 1,000,000 kept, reading PRUNE_BATCH jobs every step to delete the few that finished in it
            # held a drain at 12,500 jobs/s, deleting those few every step at 19,000, batches at 26,000-29,000
            # (30,000-33,000 with nothing to prune).
            self.jobs.prune(float("-inf"), excess, min(excess, PRUNE_BATCH))

    def trim(self, now: float) -> None:
        """Give the memory of a burst back once the host has had no request or result for a second.

        Dicts never shrink as entries are removed: the open-job indexes are copied to their present size.
        Then a full collection, and glibc's malloc_trim returns the free pages.
        """
        last_work = self._last_work()
        if self.last_trim >= last_work or now - last_work < IDLE_TRIM:
            return
        self.last_trim = now
        self.jobs.trim()
        self.waiters.trim()
        gc.collect()
        if _libc is not None:
            _libc.malloc_trim(0)

    def next_trim(self, now: float) -> float | None:
        """Seconds until a trim is due; None while none is pending."""
        last_work = self._last_work()
        return last_work + IDLE_TRIM - now if self.last_trim < last_work else None

    def _last_work(self) -> float:
        """Monotonic time of the last request that may allocate much, or of the last results."""
        return max(self.started_work, self.requests.last_burst, self.fleet.last_result)
