"""tq-host's parts assembled in-process by the function tq-host uses (tq.host.assembly.assemble), for tests
that drive them one call at a time: a real SQLite store in a temporary dir, and MemoryMailboxes (the in-memory
twin of the POSIX mailboxes) for the host's mailbox and the workers' inboxes. The test plays the workers."""

from __future__ import annotations

import logging
import selectors
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tq import config, configload, log, protocol
from tq.host.assembly import HostParts, assemble
from tq.host.records import JobRecord
from tq.transport import Mailbox
from tq.transport.memory import MemoryMailboxes


@dataclass
class Parts:
    """tq-host's parts (made by tq.host.assembly.assemble, as tq-host makes them) and the memory mailboxes."""

    cfg: config.Config
    host: HostParts
    mq: Mailbox
    mailboxes: MemoryMailboxes
    inboxes: dict[str, Mailbox] = field(default_factory=dict)
    captured: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        h = self.host
        self.store, self.jobs, self.fleet, self.dispatcher = h.store, h.jobs, h.fleet, h.dispatcher
        self.queues = h.queues
        self.requests, self.ledger, self.waiters, self.admission = h.requests, h.ledger, h.waiters, h.admission
        self.scheduler, self.stream, self.server = h.scheduler, h.stream, h.server

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

    def started(self, job: JobRecord, now: float = 0.0) -> None:
        """The worker says the job's handler has been running for a while."""
        assert job.worker is not None
        self.worker_says(protocol.Started(job.worker, job.id, job.attempts, 1.7e9), now)

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
    cfg = configload.load(str(path))
    logger = logging.getLogger("tq-host.test")
    captured: list[Any] = []
    mailboxes = MemoryMailboxes(cfg)
    mq = mailboxes.open_host()
    host = assemble(cfg, mq, mailboxes.open_inbox, selectors.DefaultSelector(),
                    log.JobEvents(logger, "none", 1, captured), captured, logger, log.Burst(logger), [])
    return Parts(cfg, host, mq, mailboxes, captured=captured)
