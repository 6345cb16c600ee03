"""tq-host's parts, made in one place: each is given its collaborators when it is made.

tq-host and the in-process tests (tests/parts.py) both call `assemble`, so the tests drive the parts wired
exactly as the daemon wires them. Where two parts need each other (the server and the event stream; the job
table and the follow-ups that submit jobs into it), one is given a function that reaches the other once both
exist.
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import config, protocol
from ..log import Burst, JobEvents
from ..transport import Mailbox
from .dispatch import Dispatcher
from .fleet import Fleet, OpenInbox
from .jobs import JobTable
from .opencounts import OpenCounts
from .queues import Queues
from .records import JobRecord
from .replies import Ledger
from .requests import Requests
from .schedules import Scheduler
from .server import Server
from .snapshot import Snapshot
from .stats import Stats
from .store import Store
from .storewatch import StoreWatch
from .stream import EventStream
from .submit import Admission
from .tokens import Tokens
from .upkeep import Upkeep
from .waiters import Waiters


@dataclass(frozen=True)
class HostParts:
    store: Store
    stats: Stats
    jobs: JobTable
    fleet: Fleet
    queues: Queues
    dispatcher: Dispatcher
    ledger: Ledger
    waiters: Waiters
    admission: Admission
    scheduler: Scheduler
    stream: EventStream
    snapshot: Snapshot
    requests: Requests
    server: Server
    tokens: Tokens
    upkeep: Upkeep
    storewatch: StoreWatch

    def configure(self, cfg: config.Config) -> None:
        """Put a reloaded configuration into effect in every part that reads it."""
        self.upkeep.configure(cfg)
        self.fleet.configure(cfg)
        self.dispatcher.configure(cfg)
        self.queues.configure(cfg)
        self.scheduler.configure(cfg)
        self.requests.configure(cfg)


def assemble(cfg: config.Config, mailbox: Mailbox, open_inbox: OpenInbox, sel: selectors.BaseSelector,
             events: JobEvents, captured: list[Any], logger: logging.Logger, malformed: Burst,
             notes: list[str], broker: Callable[[], dict[str, str]] | None = None) -> HostParts:
    """Open the store in `host.state_dir` and make tq-host's parts around it and the host's mailbox.

    `events` appends every job event's fields to `captured` (the event stream reads them); `notes` are the
    limits granted below the configuration (`tqctl status` shows them), `broker` where its link to a broker
    stands (`tqctl status` too; none without one).
    """
    stats = Stats()
    store = Store(cfg.host.state_dir, cfg.host.durability, stats.commits.observe_all)
    stream = EventStream(captured, lambda conn: server.close_conn(conn), stats.count)
    jobs = JobTable(store, events, lambda job: admission.on_final(job))

    def on_result(job: JobRecord, result: protocol.Result) -> None:
        dispatcher.timed(job.task, result.duration)
        stats.duration(job.task, result.duration)
        jobs.finish(job, result)

    fleet = Fleet(cfg, mailbox, jobs, store, open_inbox, on_result, stream.worker_event, logger, malformed)
    queues = Queues(cfg, store, jobs, OpenCounts(jobs), fleet, logger)
    dispatcher = Dispatcher(cfg, jobs, fleet, queues)
    ledger = Ledger()
    waiters = Waiters(jobs, ledger)
    admission = Admission(cfg, jobs, queues, waiters, ledger, logger)
    scheduler = Scheduler(cfg, store, jobs, admission.submit_internal, logger)
    snapshot = Snapshot(cfg, store, jobs, queues, fleet, stream, stats, malformed, notes, scheduler.public, broker)
    tokens = Tokens(store, lambda: requests.access, logger)
    requests = Requests(cfg, jobs, fleet, queues, stream, admission, waiters, ledger, snapshot, scheduler.public,
                        tokens, logger)
    server = Server(sel, requests.handle, stream.forget_closed, Burst(logger))
    return HostParts(store, stats, jobs, fleet, queues, dispatcher, ledger, waiters, admission, scheduler, stream,
                     snapshot, requests, server, tokens, Upkeep(cfg, jobs, waiters, requests, fleet),
                     StoreWatch(store, requests.ops, logger))
