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
and the fence), dispatch.py (assigning and sending), store.py (SQLite),
upkeep.py (retention, memory), brokerwatch.py (remote workers' checks),
storewatch.py (the store's file removed or replaced under tq-host).

The parts the step reaches for each job are attributes of Host; the others
are reached through `self.parts`. Host and Daemon together keep under 30
instance attributes (tests/unit/test_attribute_budget.py says why).
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import logging
import os
import selectors
import sqlite3
import time
from functools import partial
from typing import IO, Any

from .. import __version__, config, control, transport
from ..daemon import EXIT_CONFIG, EXIT_FOREIGN, Daemon, StartError, command_line, load_config
from ..log import Burst
from .assembly import assemble
from .brokerwatch import BrokerWatch, link_state
from .linkwatch import LinkClock
from .recovery import RESTARTED, ROLLED_BACK, recover
from .storefaults import describe
from .storefile import STORE_FILE, StoreError


class Host(Daemon):
    RESTART_KEYS = ("host.state_dir", "host.socket", *Daemon.RESTART_KEYS)
    HOST = True

    def __init__(self, cfg: config.Config, config_path: str | None) -> None:
        """Acquire the state dir, open the store and the host's mailbox, and make the parts (assembly.py)."""
        captured: list[Any] = []  # every job event's fields, for the event stream
        super().__init__("tq-host", cfg, config_path, captured)
        self.store_errors = Burst(self.logger, interval=5.0)
        self.queue_readable = True  # the host queue may hold messages: the next step reads it
        cfg = self.cfg = self.granted(self.cfg, self.mailboxes.message_size, self.mailboxes.notes)
        self._lock = _lock_state_dir(cfg.host.state_dir)
        self.drained: list[bytes] = []  # what a host mailbox of other dimensions held: taken in at start
        mailbox = self.mailboxes.open_host(self.drained)
        self.note_limits(self.mailboxes.notes)  # and one more where the mailbox is shallower than configured
        # The mailbox wakes the selector and marks itself readable: the step drains it after the sockets.
        self.sel.register(mailbox.fileno(), selectors.EVENT_READ, self._on_queue)
        url = cfg.amqp.url
        self.parts = assemble(cfg, mailbox, self.mailboxes.open_inbox, self.sel, self.events, captured, self.logger,
                              self.malformed, list(self.mailboxes.notes),
                              partial(link_state, self.mailboxes, url.masked()) if url and self.serviced else None)
        # The parts the loop step reaches for each job, by name (the others: self.parts):
        p = self.parts
        self.store, self.jobs, self.fleet, self.dispatcher = p.store, p.jobs, p.fleet, p.dispatcher
        self.server, self.ledger, self.waiters, self.stream = p.server, p.ledger, p.waiters, p.stream
        self.broker_watch = (BrokerWatch(self.mailboxes, self.fleet, LinkClock(
            self.mailboxes.heard, cfg.amqp.link_grace(), time.monotonic())) if self.serviced else None)

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Listen on the control socket, recover the open jobs and fence the workers, then READY=1."""
        cfg = self.cfg
        self.server.listen(cfg.host.socket)
        self.watch_signals()
        self.events.tick(time.time())
        self._recover()
        self.parts.upkeep.began(time.monotonic())
        for data in self.drained:
            self.fleet.on_message(data, time.monotonic())
        self.drained.clear()
        self._commit()
        self._deliver()
        self.logger.info("tq-host %s ready: store %s, queue %s, socket %s, %d open jobs", __version__,
                         self.store.path, cfg.host_queue, cfg.host.socket, len(self.jobs.jobs))
        self._warn(cfg)
        self.notifier.ready(self.status_text())

    def _warn(self, cfg: config.Config) -> None:
        """What `tqctl config check` warns of (a user or group that does not exist, a task pattern that matches
        nothing), logged once for each configuration taken: at the start and at each reload."""
        for warning in cfg.warnings:
            self.logger.warning("configuration warning: %s", warning)

    def _on_queue(self, _mask: int) -> None:
        self.queue_readable = True


    def select(self, timeout: float) -> None:
        """Daemon.select, then the time of this step's events and their log budget's second (one clock read
        each a step, not one an event)."""
        ready = self.sel.select(timeout)
        self.events.tick(time.time())
        for key, mask in ready:
            key.data(mask)

    def _recover(self, why: tuple[str, str] = RESTARTED) -> None:
        """Load every open job from the store and fence every known worker with a Sync (`why`: recovery.py)."""
        self.jobs.load()
        self.parts.queues.load()
        if why is RESTARTED:
            self.parts.scheduler.load(time.time())
        else:  # (tq-host was not down: no schedule's run was missed, and the one that failed is tried again later)
            self.parts.scheduler.rolled_back(time.time())
        self.dispatcher.outbox.clear()
        recover(self.fleet, time.monotonic(), why)

    def run(self) -> int:
        try:
            self.start()
        except BaseException as e:  # no socket left behind: tqctl would say "refused", not "no such file"
            self.server.close()
            if isinstance(e, sqlite3.Error):  # the store opened, and reading its jobs failed: a damaged page
                raise StoreError(describe(self.store.path, e)) from None
            raise
        while not self.stop_requested:
            self.step()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        live = self.parts.fleet.live()
        self.logger.info("tq-host stopping; %s", f"{live} live worker(s) carry on and reconnect when it is back"
                         if live else "no worker is live")
        self._commit()
        self._deliver()
        self.parts.storewatch.check(float("inf"))  # a store removed in the last second is written back too
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
            if self.parts.scheduler.next:
                self.parts.scheduler.fire_due(time.time(), time.monotonic())
            if self.broker_watch is not None:
                self.broker_watch.check(now)
            self.fleet.check_leases(now)
            self.waiters.expire(now)
            self.dispatcher.assign(now)
            self.parts.upkeep.prune(now)
            self.parts.upkeep.trim(now)
            self._commit(self.ledger.acknowledging())
            if now >= (watch := self.parts.storewatch).next_check:  # once a second: the store's file still there?
                watch.check(now)
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
        scheduler = self.parts.scheduler
        run = scheduler.next_due() if scheduler.next else None
        if run is not None:
            wait = min(wait, run - time.time())
        deadline = self.waiters.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - now)
        trim = self.parts.upkeep.next_trim(now)
        if trim is not None:
            wait = min(wait, trim)
        fleet = self.fleet.next_wakeup(now)
        if fleet is not None:
            wait = min(wait, fleet)
        queues = self.parts.queues
        rated = queues.next_wakeup(now) if queues.next_token else None
        if rated is not None:
            wait = min(wait, rated)
        events = self.stream.next_wakeup(now) if self.stream.subscribers else None
        if events is not None:
            wait = min(wait, events)
        return max(wait, 0.0)

    def _answer(self) -> None:
        for conn, reply in self.ledger.take():
            self.server.send(conn, control.encode_out(reply))

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
        if self.events.held:  # the journal's job lines, held until now
            self.events.release()

    def _store_failed(self, error: sqlite3.Error) -> None:
        """A write failed (disk full, I/O error): forget this step, reload from the store, fence workers."""
        self.parts.stats.commit_errors += 1
        self.stream.undo()
        undone = self.events.drop()
        self.store_errors(f"store write failed: {describe(self.store.path, error)}; rolled back this step"
                          + (f" ({undone} job event(s) did not happen)" if undone else "")
                          + " and recovered from the store")
        try:
            self.store.rollback()
        except sqlite3.Error:
            pass
        # Nothing this step decided is true any more: every answer that depended on it becomes a refusal.
        self.parts.requests.undo(self.store.next_id, f"store write failed: {error}; nothing was changed, try again")
        self._recover(ROLLED_BACK)

    # ---- reload and status ----------------------------------------------

    def reload(self) -> None:
        """As Daemon.reload; `tqctl status` too says a refused one, for as long as STATUS= does."""
        super().reload()
        self.parts.snapshot.refused = self.refused

    def apply(self, new: config.Config) -> None:
        if new.host.durability != self.cfg.host.durability:
            self.store.commit()  # the level applies from the next transaction
            self.store.set_durability(new.host.durability)
        self.parts.configure(new)
        self._warn(new)

    def status_text(self) -> str:
        c = self.jobs.counts
        return (f"{c['queued']} queued, {c['assigned']} assigned, {c['running']} running, "
                f"{c['delayed'] + c['failed'] + c['deferred']} waiting; "
                f"{c['done']} done, {c['dead']} dead; {self.fleet.live()} worker(s) live"
                + (f", {syncing} syncing" if (syncing := self.fleet.syncing()) else "")
                + (f"; paused: {','.join(sorted(paused))}" if (paused := self.parts.queues.paused) else "")
                + (f"; {waiting}" if (waiting := self.mailboxes.waiting_for) else "")
                + (f"; {failure}" if (failure := self.parts.storewatch.failure) else ""))


def _lock_state_dir(state_dir: str) -> IO[str]:
    """Hold the state dir's lock file for as long as this process lives: one tq-host per store."""
    path = os.path.join(state_dir, "tq.lock")
    try:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
        lock = open(path, "a")
    except OSError as e:  # read-only, another user's: say so as the store would, naming the key and the user
        raise StartError(f"host.state_dir: cannot write {e.filename or path}: {e.strerror or e} (as user "
                         f"{getpass.getuser()}): it must be a writable directory of tq-host's user") from None
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
        return EXIT_CONFIG
    if args.check_config:
        return 0
    try:
        host = Host(cfg, args.config)
        return host.run()
    except transport.MailboxForeign as e:
        logging.getLogger("tq-host").error("cannot start: %s", e)
        return EXIT_FOREIGN
    except (StartError, StoreError, transport.MailboxError, OSError) as e:
        logging.getLogger("tq-host").error("cannot start: %s", e)
        return 1
    except sqlite3.Error as e:  # (what the store's other tables hold, read while the parts are made)
        logging.getLogger("tq-host").error("cannot start: %s",
                                           describe(os.path.join(cfg.host.state_dir, STORE_FILE), e))
        return 1
