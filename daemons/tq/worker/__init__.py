"""tq-worker INSTANCE: runs the jobs tq-host puts in its inbox, one at a time.

The main loop is `step()`: finish or time out the running attempt, take the
next message when idle, send results, heartbeats and watchdog pings. Messages
to the host go through one FIFO (outbox.py) so that a result is never
overtaken by the Synced that fences it, and survive a full or absent host
mailbox: a host restart does not disturb a worker.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import selectors
import sys
import time
from dataclasses import replace

from .. import __version__, config, log, protocol, stderr, transport
from ..daemon import EXIT_CONFIG, EXIT_FOREIGN, Daemon, command_line, ignore, load_config
from ..notify import child_environment
from ..transport import Mailbox
from ..transport.machines import local_name, machine_id, machine_instance
from .attempt import Attempt
from .hostmailbox import HostMailbox
from .hostwatch import HostWatch
from .inbox import drop_posix_inbox, open_inbox
from .instancelock import InstanceTaken, take
from .outbox import Outbox
from .refusal import EXIT_REFUSED, Refusal
from .runner import Runner
from .stop import BYE_WAIT, Stop
from .taken import Taken

BATCH = 64  # messages handled per step before looking at the selector again
# Seconds a worker through a broker waits to connect before it reports READY anyway (its hello then waits for the
# connection, its STATUS says what it waits for): a broker that is down must not fail the unit's start (its
# TimeoutStartSec), hold up the boot, or restart the worker every 30 s.
CONNECT_WAIT = 10.0


class Worker(Daemon):
    def __init__(self, cfg: config.Config, config_path: str | None, instance: str,
                 mailboxes: transport.Mailboxes | None = None, argv: list[str] | None = None) -> None:
        """`argv`: the command line to re-execute with (after a Python handler outlived its stop)."""
        super().__init__(f"tq-worker@{instance}", cfg, config_path, mailboxes=mailboxes)
        cfg = self.cfg = self.granted(cfg, self.mailboxes.message_size, self.mailboxes.notes)
        # systemd's %i names the instance on this machine (its [worker.N] table, its lock); through a broker,
        # tq-host knows it with the machine's name too ("1@render-3"), unique across machines.
        self.argv = list(argv or [])
        amqp = cfg.transport.kind == "amqp"
        self.instance = machine_instance(instance, cfg.transport.machine or None) if amqp else instance
        if self.instance != instance:
            log.name_worker(self.instance)
        self.refusal = Refusal(self.logger)  # tq-host refused this process its name: it exits
        self.wcfg = cfg.worker_for(instance)
        self.outbox = Outbox(self.instance, cfg.mqueue.max_message_size)  # to the host mailbox, in order
        self.runner = Runner(self.instance, self.outbox, self.events, self.logger, cfg.mqueue.max_message_size,
                             child_environment(), self._forget)
        # Jobs of a batch not yet run, and a fence that came behind them (answered once they have run).
        self.local: collections.deque[protocol.Job | protocol.Sync] = collections.deque()
        self.watched: set[tuple[int, int]] = set()
        # Through a broker: the attempts taken since the last fence (a copy is dropped), the inbox's losses.
        self.taken = Taken() if self.serviced else None
        self.stop = Stop(self.instance, self.outbox, self.refusal, self.notifier, self.logger)  # SIGTERM's steps
        self.exit_now = False
        self.next_heartbeat = 0.0
        self.inbox: Mailbox | None = None
        self.host_mailbox = HostMailbox(self.mailboxes, self.outbox, self.logger, self._unwatch_mailboxes)
        self.lock_fd = -1  # holds this instance's lock (instancelock.py) from start on
        # Whether tq-host runs (a local one: the POSIX mailboxes do not tell; a broker's connection says its own)
        self.host_watch = (HostWatch(cfg.host.socket, self.sel, self.logger, self._heartbeat_now)
                           if isinstance(self.mailboxes, transport.PosixMailboxes) else None)

    # ---- start ----------------------------------------------------------

    def start(self) -> None:
        self.lock_fd = take(self.cfg, local_name(self.instance))  # before the inbox: a second process refuses here
        self.watch_signals()
        if self.cfg.transport.kind == "amqp":
            drop_posix_inbox(self.cfg, local_name(self.instance), self.logger)
        self.inbox, self.wcfg = open_inbox(self.mailboxes, self.instance, self.wcfg, self.logger)
        self.host_mailbox.held = self.wait_for_host()
        if self.host_mailbox.held is None or not self.wait_connected(CONNECT_WAIT):
            self.host_mailbox.held = None
            return
        self.outbox.message(self._hello())
        self.host_mailbox.flush()
        if self.host_watch is not None:
            self.host_watch.start()
        self.logger.info("tq-worker %s instance %s ready: queues %s, inbox %s", __version__, self.instance,
                         ",".join(self.wcfg.queues), self.inbox.name)
        self.notifier.ready(self.status_text())

    def _hello(self) -> protocol.Hello:
        return protocol.Hello(self.instance, os.getpid(), list(self.wcfg.queues), self.wcfg.prefetch, machine_id())

    # ---- loop -----------------------------------------------------------

    def run(self) -> int:
        self.start()
        while not self.exit_now and self.host_mailbox.held is not None:
            self.step()
        self.notifier.stopping()
        deadline = time.monotonic() + BYE_WAIT
        while self.outbox and self.host_mailbox.held is not None and time.monotonic() < deadline:
            self.host_mailbox.flush()
            if self.outbox:  # wait for room in the host mailbox
                self.notifier.tick(time.monotonic())
                self._watch([], False, True)
                self.select(0.1)
        while self.mailboxes.unsettled() and time.monotonic() < deadline:  # a broker's confirms of the last reports
            self.notifier.tick(time.monotonic())
            self.select(0.1)
        self.runner.leftovers.kill_all()
        if self.runner.reexec:
            self._reexec()
        if self.refusal.reason:
            return EXIT_REFUSED
        self.logger.info("tq-worker %s stopped", self.instance)
        return 0

    def step(self) -> None:
        """One loop iteration; blocks in the selector only when there is nothing to do."""
        now = time.monotonic()
        self.events.tick()
        progressed = self.runner.poll(now, self.stop.started, self.wcfg.stop_timeout)
        if self.reload_requested:
            self.reload()
        if self.stop_requested:
            self._stopping(now)
        self.host_mailbox.flush()
        if self.runner.current is None and not self.outbox and not self.runner.reexec:
            for _ in range(BATCH):
                if self.local:  # (written out, not _take_local: a call per job shows in docs/performance.md)
                    item = self.local.popleft()
                    if isinstance(item, protocol.Sync):
                        self._on_sync(item)
                    else:
                        self._on_job(item)
                else:
                    assert self.inbox is not None
                    data = self.inbox.receive()
                    if data is None:
                        break
                    self._on_message(data)
                progressed = True
                if self.runner.current is not None or self.outbox or self.exit_now:
                    break
        elif self.runner.current is not None:  # a running job: take in what came, to see a Cancel at once
            assert self.inbox is not None
            while (data := self.inbox.receive()) is not None:
                self._on_message(data)
        self.outbox.pack_results()
        self.host_mailbox.flush()
        if self.runner.reexec and not self.outbox:
            self.exit_now = True
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self._heartbeat(now)
            self.runner.leftovers.sweep(now)
        wait = self.notifier.tick(now)
        self._status(now)
        if progressed or self.exit_now:
            return
        self._wait(now, wait)

    def _wait(self, now: float, ping: float | None) -> None:
        timeout = min(self.next_heartbeat - now, 1.0)
        if ping is not None:
            timeout = min(timeout, ping)
        current = self.runner.current
        if current is not None:
            timeout = min(timeout, current.next_event() - now)
        if self.stop_requested:
            timeout = min(timeout, 0.05)
        inbox = (current is not None or not self.outbox) and not self.stop_requested
        self._watch(current.execution.fds if current else [], inbox, bool(self.outbox))
        self.select(max(timeout, 0.0))

    def _watch(self, fds: list[int], inbox: bool, host_writable: bool = False) -> None:
        """Watch the running attempt's descriptors, the inbox only when idle (else it would spin), and the
        host mailbox for room while messages wait to be sent to it."""
        assert self.inbox is not None and self.host_mailbox.held is not None
        wanted = {(fd, selectors.EVENT_READ) for fd in fds}
        if inbox:
            wanted.add((self.inbox.fileno(), selectors.EVENT_READ))
        if host_writable:
            wanted.add((self.host_mailbox.held.fileno(), selectors.EVENT_WRITE))
        for fd, _events in self.watched - wanted:
            self.sel.unregister(fd)
        for fd, events in wanted - self.watched:
            self.sel.register(fd, events, ignore)  # they only wake the selector: the step looks at each
        self.watched = wanted

    # ---- messages from the host -----------------------------------------

    def _on_message(self, data: bytes) -> None:
        try:
            msg = protocol.decode(data)
            if isinstance(msg, protocol.Jobs):
                self.local.extend(protocol.unpack_jobs(msg))  # all items are checked before any is kept
                return
        except protocol.ProtocolError as e:
            self.malformed(f"dropped a malformed message on {self.cfg.inbox(self.instance)}: {e}")
            return
        if isinstance(msg, protocol.Sync):
            if self.runner.current is None and not self.local:
                self._on_sync(msg)
            else:
                self.local.append(msg)  # answered after everything that came before it
        elif isinstance(msg, protocol.Cancel):
            self.runner.cancel(msg)
        elif isinstance(msg, protocol.Refused):
            self.stop_requested |= self.refusal.take(msg)
        elif isinstance(msg, protocol.NotSent):
            if msg.pid == os.getpid() and msg.machine == machine_id():  # (the name's inbox may be shared)
                self.logger.warning("tq-host will send this worker no jobs of queue(s) %s, which [worker] queues "
                                    "names: %s", ",".join(msg.queues), msg.reason)
        else:
            self.malformed(f"dropped a {type(msg).__name__} message, which tq-host does not send")

    def _on_sync(self, msg: protocol.Sync) -> None:
        """The host's fence: answer after everything before it; reopen the host mailbox (it may be new)."""
        self.host_mailbox.reach()
        self.outbox.message(protocol.Synced(self.instance, msg.token, machine_id()))
        if self.taken is not None:
            self.taken.clear()  # past the fence tq-host assigns anew (taken.py)
        if self.stop.bye_at:
            self.exit_now = True

    def _take_local(self) -> None:
        """The next job or fence of those taken in (a fence comes after the jobs before it)."""
        item = self.local.popleft()
        if isinstance(item, protocol.Sync):
            self._on_sync(item)
        else:
            self._on_job(item)

    def _on_job(self, job: protocol.Job) -> None:
        # (a copy is dropped before a Release, which would requeue the attempt)
        if self.taken is not None and not self.taken.first(job.id, job.attempt):
            self.logger.warning("dropped job %d attempt %d: delivered again (already taken)", job.id, job.attempt,
                                extra={"TQ_JOB_ID": job.id, "TQ_ATTEMPT": job.attempt})
            return
        if self.stop_requested:
            self.outbox.message(protocol.Release(self.instance, job.id, job.attempt))
            return
        self.runner.start(job)

    def _forget(self, _ending: Attempt) -> None:
        """Stop watching the ending attempt's descriptors before they are closed (their numbers get reused).

        The mailboxes stay as they are watched: toggling the inbox after every job cost two epoll_ctl calls.
        """
        assert self.inbox is not None and self.host_mailbox.held is not None
        mailboxes = (self.inbox.fileno(), self.host_mailbox.held.fileno())
        for entry in [e for e in self.watched if e[0] not in mailboxes]:
            self.sel.unregister(entry[0])
            self.watched.discard(entry)

    def _unwatch_mailboxes(self) -> None:
        """Watch the running attempt's descriptors only: the host mailbox is about to be closed (hostmailbox.py)."""
        current = self.runner.current
        self._watch(current.execution.fds if current else [], False)

    # ---- reports to the host ---------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self.next_heartbeat = now + self.wcfg.heartbeat
        if self.outbox.stuck(now, self.wcfg.heartbeat):
            self.host_mailbox.check_replaced()
        if self.taken is not None and self.taken.inbox_lost(self.mailboxes.losses()):
            self.outbox.message(self._hello())
        if self.host_watch is not None and self.host_watch.check():
            self.notifier.status(self.status_text())
        if self.outbox or self.stop.bye_at or self.refusal.reason:
            return  # the host is behind; results first
        running = self.runner.current.job.id if self.runner.current else 0
        msg = protocol.Heartbeat(self.instance, os.getpid(), list(self.wcfg.queues), self.wcfg.prefetch, running,
                                 self.runner.figures(now), machine_id())
        if len(protocol.encode(msg)) > self.cfg.mqueue.max_message_size:  # a tiny max_message_size, long names
            msg = replace(msg, monitor={})
        self.outbox.message(msg)
        self.host_mailbox.flush()

    def _heartbeat_now(self) -> None:
        self.next_heartbeat = 0.0

    def _status(self, now: float) -> None:
        if self.notifier.status_due(now):
            self.notifier.status(self.status_text(), now)

    def status_text(self) -> str:
        if self.stop_requested:
            return "stopping"
        # (a broker's connection that is down, or a local tq-host that is gone: what it waits for)
        waiting = self.mailboxes.waiting_for or (self.host_watch.waiting_for if self.host_watch else "")
        if self.runner.current is not None:
            j = self.runner.current.job
            return f"running job {j.id} ({j.task}), attempt {j.attempt}" + (f"; {waiting}" if waiting else "")
        return waiting or "idle"

    # ---- stop and reload --------------------------------------------------

    def _stopping(self, now: float) -> None:
        """SIGTERM: finish (or hand back) the running job, hand back the inbox, say Bye, exit on the fence (stop.py)."""
        if self.stop.step(now, self.runner.current is not None, self.wcfg.stop_timeout):
            while self.refusal.reason and self.local:  # refused: hand back what it holds (a fence: sent again)
                self._take_local()
            self.exit_now = True

    def apply(self, new: config.Config) -> None:
        old_worker, wcfg = self.wcfg, new.worker_for(local_name(self.instance))
        assert self.inbox is not None
        most = self.inbox.max_messages - 1  # the inbox's depth is fixed: prefetch jobs and the host's fence
        if wcfg.prefetch > most:
            self.logger.warning("worker.prefetch = %d needs an inbox of %d messages; this one holds %d: takes "
                                "effect at the next restart", wcfg.prefetch, wcfg.prefetch + 1, most + 1)
            wcfg = replace(wcfg, prefetch=most)
        self.wcfg = wcfg
        if (wcfg.queues, wcfg.prefetch) != (old_worker.queues, old_worker.prefetch):
            self.outbox.message(self._hello())

    def _reexec(self) -> None:
        self.logger.warning("restarting this worker process: a Python handler outlived its timeout or cancel")
        os.execv(sys.executable, [sys.executable, "-m", "tq.worker", *self.argv])


def build_parser() -> argparse.ArgumentParser:
    """tq-worker's command line (also the source of its man page, tq-worker(8))."""
    parser = command_line("tq-worker", "A tq worker: runs the jobs tq-host hands it.")
    parser.add_argument("instance", help="worker instance name, e.g. 1 (systemd's %%i)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not config.INSTANCE_RE.fullmatch(args.instance):
        stderr.line(f"tq-worker: invalid instance {args.instance!r}: letters, digits, _ and - (at most 32)")
        return EXIT_CONFIG
    cfg = load_config("tq-worker", args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.check_config:
        return 0
    try:
        worker = Worker(cfg, args.config, args.instance, argv=sys.argv[1:] if argv is None else argv)
        return worker.run()
    except transport.MailboxForeign as e:
        logging.getLogger(f"tq-worker@{args.instance}").error("cannot start: %s", e)
        return EXIT_FOREIGN
    except (transport.MailboxError, InstanceTaken) as e:
        logging.getLogger(f"tq-worker@{args.instance}").error("cannot start: %s", e)
        return 1

