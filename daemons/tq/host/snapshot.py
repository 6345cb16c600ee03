"""What tq-host says about itself: `tqctl status`, and the metrics' snapshot that tq/metrics.py writes as
Prometheus text (for `tqctl metrics` and tq-metrics.service)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .. import __version__, config, monitor
from ..log import Burst
from ..states import JobState
from .fleet import Fleet
from .jobs import JobTable
from .queues import Queues
from .server import Conn
from .stats import Stats
from .store import Store
from .stream import EventStream


class Snapshot:
    def __init__(self, cfg: config.Config, store: Store, jobs: JobTable, queues: Queues, fleet: Fleet,
                 stream: EventStream, stats: Stats, malformed: Burst, notes: list[str],
                 schedules: Callable[[], list[dict[str, Any]]],
                 broker: Callable[[], dict[str, str]] | None = None) -> None:
        self.cfg, self.store, self.jobs, self.queues, self.fleet = cfg, store, jobs, queues, fleet
        self.schedules = schedules  # every schedule with its runs (Scheduler.public)
        self.stream, self.stats, self.malformed = stream, stats, malformed
        self.notes = notes  # where the mailboxes got less than the configuration asks (shown by status)
        self.broker = broker  # where tq-host's link to its broker stands ({"url", "state", "detail"}), if it has one
        self.started = time.time()
        self.refused = ""  # why the last reload was refused (the running configuration is not the files'), if so

    def configure(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def status(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """The `status` op."""
        return {"version": __version__, "pid": os.getpid(), "uptime": round(time.time() - self.started, 3),
                "states": {s.value: self.jobs.counts[s] for s in JobState}, "workers_live": self.fleet.live(),
                "workers_syncing": self.fleet.syncing(), "workers_known": len(self.fleet.workers),
                "malformed_messages": self.malformed.total, "paused": sorted(self.queues.paused),
                "config": list(self.cfg.files), "reload_refused": self.refused or None,
                "mqueue": {"max_messages": self.fleet.mq.max_messages,
                           "max_message_size": self.cfg.mqueue.max_message_size, "limited": self.notes},
                **({"broker": self.broker()} if self.broker is not None else {})}

    def metrics(self) -> dict[str, Any]:
        """The counters, and gauges read now."""
        now = time.monotonic()
        self.stream.digest()  # the events and commit times not yet counted
        self.store.hand_over_commit_seconds()
        store_bytes = 0
        for suffix in ("", "-wal"):
            try:
                store_bytes += os.stat(self.store.path + suffix).st_size
            except OSError:
                pass
        cpu = os.times()
        return {"host": {"pid": os.getpid(), "start_time": self.started, "rss_bytes": monitor.rss_bytes(),
                         "cpu_seconds": cpu.user + cpu.system},
                "states": {s.value: self.jobs.counts[s] for s in JobState},
                "queues": self.queues.listing(periodic=True),
                "workers": self.fleet.public(now),
                "store_bytes": store_bytes,
                "events": self.stream.public(),
                "malformed_messages": self.malformed.total,
                "schedules": self.schedules(),
                **self.stats.public()}
