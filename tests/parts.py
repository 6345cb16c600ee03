"""tq-host's parts wired together in-process, as tq-host wires them, for tests that drive them one call at a
time: a real SQLite store in a temporary dir, and MemoryMailboxes (the in-memory twin of the POSIX
mailboxes) for the host's mailbox and the workers' inboxes. The test plays the workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tq import config, log, protocol
from tq.host.dispatch import Dispatcher
from tq.host.fleet import Fleet
from tq.host.jobs import JobTable
from tq.host.queues import Queues
from tq.host.requests import Requests
from tq.host.store import JobRecord, Store
from tq.transport import Mailbox
from tq.transport.memory import MemoryMailboxes


@dataclass
class Parts:
    cfg: config.Config
    store: Store
    jobs: JobTable
    fleet: Fleet
    dispatcher: Dispatcher
    requests: Requests
    mq: Mailbox
    queues: Queues
    mailboxes: MemoryMailboxes
    inboxes: dict[str, Mailbox] = field(default_factory=dict)

    def worker_says(self, msg: protocol.Message, now: float = 0.0) -> None:
        """A worker's message, taken in as the host's step does."""
        assert self.mq.send(protocol.encode(msg), 0)
        self.fleet.intake(now)

    def inbox_messages(self, instance: str) -> list[protocol.Message]:
        out = []
        while (data := self.inboxes[instance].receive()) is not None:
            out.append(protocol.decode(data))
        return out

    def start_worker(self, instance: str, pid: int = 100, queues: tuple[str, ...] = ("default",), prefetch: int = 8,
                     now: float = 0.0) -> None:
        """A worker says hello and answers the fence: it is live."""
        self.inboxes.setdefault(instance, self.mailboxes.create_inbox(instance, prefetch + 1))
        self.worker_says(protocol.Hello(instance, pid, list(queues), prefetch), now)
        syncs = [m for m in self.inbox_messages(instance) if isinstance(m, protocol.Sync)]
        self.worker_says(protocol.Synced(instance, syncs[-1].token), now)

    def result(self, job: JobRecord, ok: bool = True, output: str = "out", duration: float = 0.001,
               now: float = 0.0) -> None:
        assert job.worker is not None
        item = [job.id, job.attempts, ok, output, "" if ok else "boom", duration, 0.0, {}]
        self.worker_says(protocol.Results(job.worker, [item]), now)

    def close(self) -> None:
        self.store.close()
        self.mailboxes.close()


def make_parts(state_dir: Path, toml: str = '[tasks."#"]\nhandler = "echo"\n') -> Parts:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "tq.toml"
    path.write_text(f'[host]\nstate_dir = "{state_dir}"\nsocket = "{state_dir}/tq.sock"\n{toml}')
    cfg = config.load(str(path))
    logger = logging.getLogger("tq-host.test")
    store = Store(str(state_dir))
    jobs = JobTable(store, log.JobEvents(logger, "none", 1))
    mailboxes = MemoryMailboxes(cfg)
    mq = mailboxes.open_host()
    fleet = Fleet(cfg, mq, jobs, store, mailboxes.open_inbox, lambda job, r: None, logger, log.Burst(logger))
    queues = Queues(cfg, store, jobs, fleet, logger)
    dispatcher = Dispatcher(cfg, jobs, fleet, queues)

    def on_result(job: JobRecord, r: protocol.Result) -> None:  # as tq-host wires it
        dispatcher.timed(job.task, r.duration)
        jobs.finish(job, r)

    fleet.on_result = on_result
    requests = Requests(cfg, jobs, fleet, queues, fleet.malformed)
    return Parts(cfg, store, jobs, fleet, dispatcher, requests, mq, queues, mailboxes)
