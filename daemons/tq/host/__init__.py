"""tq-host: keeps the jobs, dispatches them to workers, records their outcome.

One thread, one selector: the control socket, the host's mailbox and the
signal wake-up pipe. `step()` is one loop iteration: take in what arrived,
decide (promote delayed jobs, expire leases and waiters, assign jobs), commit
once (group commit), and only then answer clients and send jobs. A job is
assigned in the store before its message is sent, so after a crash the Sync
fence (see fleet.py) finds every assignment that never reached its worker.

Where things live: assembly.py (the parts, made in one place), server.py (the
control socket), requests.py (the operations), submit.py (submit admission),
waiters.py (waits and their deadlines), replies.py (replies held until the
commit), jobs.py (the job table and its transitions), fleet.py (the workers
and the fence), dispatch.py (assigning and sending), store.py (SQLite).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import logging
import os
import selectors
import sqlite3
import time
from typing import IO, Any

from .. import __version__, config, control, transport
from ..daemon import Daemon, StartError, command_line, load_config
from ..log import Burst
from .assembly import assemble
from .carriage import remote_workers
from .store import StoreError
from .workerstate import WorkerState

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")  # malloc_trim: glibc only
except OSError:
    _libc = None
PRUNE_BATCH = 1000  # finished jobs deleted per loop step while the store is over its retention policy
PRUNE_INTERVAL = 60.0  # seconds between retention checks once caught up
IDLE_TRIM = 1.0  # seconds without requests or results before the memory of a burst is given back


class Host(Daemon):
    RESTART_KEYS = ("host.state_dir", "host.socket", *Daemon.RESTART_KEYS)
    HOST = True

    def __init__(self, cfg: config.Config, config_path: str | None) -> None:
        """Acquire the state dir, open the store and the host's mailbox, and make the parts (assembly.py)."""
        captured: list[Any] = []  # every job event's fields, for the event stream
        super().__init__("tq-host", cfg, config_path, captured)
        self.store_errors = Burst(self.logger, interval=5.0)
        self.next_prune = 0.0
        self.last_trim = 0.0  # monotonic time the memory was last trimmed
        self.started_work = 0.0  # recovery allocates too: trim a second after start
        self.queue_readable = True  # the host queue may hold messages: the next step reads it
        self.losses = 0  # the transport's count of queues deleted under tq-host, as last seen
        cfg = self.cfg = self.granted(self.cfg, self.mailboxes.message_size, self.mailboxes.notes)
        self._lock = _lock_state_dir(cfg.host.state_dir)
        self.drained: list[bytes] = []  # what a host mailbox of other dimensions held: taken in at start
        mailbox = self.mailboxes.open_host(self.drained)
        self.note_limits(self.mailboxes.notes)  # and one more where the mailbox is shallower than configured
        # The mailbox wakes the selector and marks itself readable: the step drains it after the sockets.
        self.sel.register(mailbox.fileno(), selectors.EVENT_READ, self._on_queue)
        self.parts = assemble(cfg, mailbox, self.mailboxes.open_inbox, self.sel, self.events, captured, self.logger,
                              self.malformed, list(self.mailboxes.notes))
        # The parts the loop step reaches most, by name:
        p = self.parts
        self.store, self.jobs, self.fleet, self.dispatcher = p.store, p.jobs, p.fleet, p.dispatcher
        self.queues, self.scheduler, self.requests, self.server = p.queues, p.scheduler, p.requests, p.server
        self.ledger, self.waiters, self.stream, self.stats = p.ledger, p.waiters, p.stream, p.stats

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Listen on the control socket, recover the open jobs and fence the workers, then READY=1."""
        cfg = self.cfg
        self.server.listen(cfg.host.socket)
        self.watch_signals()
        self.events.tick(time.time())
        self._recover()
        self.started_work = time.monotonic()
        for data in self.drained:
            self.fleet.on_message(data, time.monotonic())
        self.drained.clear()
        self._commit()
        self._deliver()
        self.logger.info("tq-host %s ready: store %s, queue %s, socket %s, %d open jobs", __version__,
                         self.store.path, cfg.host_queue, cfg.host.socket, len(self.jobs.jobs))
        self.notifier.ready(self.status_text())

    def _on_queue(self, _mask: int) -> None:
        self.queue_readable = True


    def select(self, timeout: float) -> None:
        """Daemon.select, then the time of this step's events and their log budget's second (one clock read
        each a step, not one an event)."""
        ready = self.sel.select(self.transport_timeout(timeout) if self.serviced else timeout)
        self.events.tick(time.time())
        for key, mask in ready:
            key.data(mask)
        if self.serviced:
            self.mailboxes.service(time.monotonic())

    def _recover(self) -> None:
        """Load every open job from the store and fence every known worker with a Sync."""
        self.jobs.load()
        self.queues.load()
        self.scheduler.load(time.time())
        self.dispatcher.outbox.clear()
        self.fleet.recover(time.monotonic())

    def run(self) -> int:
        self.start()
        while not self.stop_requested:
            self.step()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.logger.info("tq-host stopping; workers carry on and reconnect when it is back")
        self._commit()
        self._deliver()
        self.server.close()
        self.fleet.close()
        self.store.close()

    # ---- the loop step --------------------------------------------------

    def step(self, max_wait: float | None = None) -> None:
        """One loop iteration: intake, decisions, one commit, then replies and dispatch."""
        now = time.monotonic()
        ping = self.notifier.tick(now)
        wait = self._time_to_next_work(now, ping)
        if max_wait is not None:
            wait = min(wait, max_wait)
        try:
            self.select(wait)  # control requests are handled here
            now = time.monotonic()
            if self.store.durability == "full" and self.ledger.acknowledging():
                # The fsync is most of a submit's round trip: answer before the step's other work, whose commit
                # below is not fsync'd if it acknowledges nothing. A submit that waits for its result has its job
                # assigned first: it then goes out with this fsync, not after the next commit.
                if self.ledger.result_awaited:
                    self.dispatcher.assign(now)
                self._commit(True)
                self._deliver()
            if self.queue_readable:  # (an empty read costs a system call per step: only when it has some)
                self.queue_readable = self.fleet.intake(now)
            if self.reload_requested:
                self.reload()
            self.jobs.promote_due()
            if self.scheduler.next:
                self.scheduler.fire_due(time.time())
            if self.serviced:
                self._broker_checks(now)
            self.fleet.check_leases(now)
            self.waiters.expire(now)
            self.dispatcher.assign(now)
            self._prune(now)
            self._trim_memory(now)
            self._commit(self.ledger.acknowledging())
        except sqlite3.Error as e:  # disk full, I/O error: this step is undone, the host carries on
            self._store_failed(e)
        self._deliver()
        if self.stream.subscribers:
            self.stream.flush(time.monotonic())
        self.notifier.tick(now)
        if self.notifier.status_due(now):
            self.notifier.status(self.status_text(), now)

    def _time_to_next_work(self, now: float, ping: float | None) -> float:
        """Seconds the selector may sleep: until the next watchdog ping, delayed job, timeout or trim."""
        wait = 1.0
        if ping is not None:
            wait = min(wait, ping)
        due = self.jobs.next_due()
        if due is not None:
            wait = min(wait, due - time.time())
        run = self.scheduler.next_due() if self.scheduler.next else None
        if run is not None:
            wait = min(wait, run - time.time())
        deadline = self.waiters.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - now)
        if self.last_trim < self._last_work():
            wait = min(wait, self._last_work() + IDLE_TRIM - now)
        fleet = self.fleet.next_wakeup(now)
        if fleet is not None:
            wait = min(wait, fleet)
        rated = self.queues.next_wakeup(now) if self.queues.next_token else None
        if rated is not None:
            wait = min(wait, rated)
        events = self.stream.next_wakeup(now) if self.stream.subscribers else None
        if events is not None:
            wait = min(wait, events)
        return max(wait, 0.0)

    def _answer(self) -> None:
        for conn, reply in self.ledger.take():
            self.server.send(conn, control.encode(reply))

    def _deliver(self) -> None:
        """After the commit: answer the clients and send the jobs assigned this step. The answers go first (a
        producer waits for each), unless a client waits for the result of a job going out now: then the job.
        The other order measured: a producer lost a third of its rate, submit_and_wait 15% of its round trip."""
        if not self.ledger.result_awaited:
            self._answer()
        if self.dispatcher.send():  # some went back to the queue: that change is committed too
            try:
                self._commit(acknowledged=False)
            except sqlite3.Error as e:
                self._store_failed(e)
        self._answer()

    def _commit(self, acknowledged: bool = True) -> None:
        """The step's one commit (Store.commit); then its events have happened."""
        self.store.commit(acknowledged)
        self.stream.committed()

    def _store_failed(self, error: Exception) -> None:
        """A write failed (disk full, I/O error): forget this step, reload from the store, fence workers."""
        self.stats.commit_errors += 1
        self.stream.undo()
        self.store_errors(f"store write failed: {error}; rolled back this step and recovered from {self.store.path}")
        try:
            self.store.rollback()
        except sqlite3.Error:
            pass
        # Nothing this step decided is true any more: every answer that depended on it becomes a refusal.
        self.requests.undo(self.store.next_id, f"store write failed: {error}; nothing was changed, try again")
        self._recover()

    # ---- upkeep ---------------------------------------------------------

    def _prune(self, now: float) -> None:
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

    def _last_work(self) -> float:
        """Monotonic time of the last request that may allocate much, or of the last results."""
        return max(self.started_work, self.requests.last_burst, self.fleet.last_result)

    def _trim_memory(self, now: float) -> None:
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

    # ---- reload and status ----------------------------------------------

    def apply(self, new: config.Config) -> None:
        if new.host.durability != self.cfg.host.durability:
            self.store.commit()  # the level applies from the next transaction
            self.store.set_durability(new.host.durability)
        self.parts.configure(new)

    def _broker_checks(self, now: float) -> None:
        """With workers through a broker: while tq-host's own connection to it is down, their silence is not
        theirs (their leases start again when it is back); a queue of tq-host's deleted on the broker has every
        remote worker fenced, since reports may have been lost with it."""
        if self.mailboxes.waiting_for:
            for w in self._remote_workers():
                w.seen = now
        if (losses := self.mailboxes.losses()) != self.losses:
            self.losses = losses
            cause = "tq-host's queue on the broker was deleted"
            for w in self._remote_workers():
                if w.state == "live":
                    self.fleet.fence(w, "syncing", cause, f"{cause}: checking that each of its jobs was reported")

    def _remote_workers(self) -> list[WorkerState]:
        return [self.fleet.workers[i] for i in remote_workers(list(self.fleet.workers))]

    def status_text(self) -> str:
        c = self.jobs.counts
        return (f"{c['queued']} queued, {c['assigned']} assigned, {c['running']} running, "
                f"{c['delayed'] + c['failed'] + c['deferred']} waiting; "
                f"{c['done']} done, {c['dead']} dead; {self.fleet.live()} worker(s) live"
                + (f"; {waiting}" if (waiting := self.mailboxes.waiting_for) else ""))


def _lock_state_dir(state_dir: str) -> IO[str]:
    """Hold the state dir's lock file for as long as this process lives: one tq-host per store."""
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    lock = open(os.path.join(state_dir, "tq.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StartError(f"another tq-host is running on {state_dir}") from None
    return lock


def build_parser() -> argparse.ArgumentParser:
    """tq-host's command line (also the source of its man page, tq-host(8))."""
    return command_line("tq-host", "The tq host daemon: keeps and dispatches jobs.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config("tq-host", args.config)
    if cfg is None:
        return 2
    try:
        host = Host(cfg, args.config)
        return host.run()
    except (StartError, StoreError, transport.MailboxError, OSError) as e:
        logging.getLogger("tq-host").error("cannot start: %s", e)
        return 1
