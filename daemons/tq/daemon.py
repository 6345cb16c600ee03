"""What tq-host and tq-worker share: the selector, the signal self-pipe, the stop and reload flags,
sd_notify, logging, and the reload scaffolding.

A signal handler only sets a flag; the wake-up pipe makes the selector return,
and the daemon's loop step does the work (and pings the watchdog).
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import time
from dataclasses import replace
from typing import Any

from . import __version__, config, configload, log, stderr, transport
from .notify import Notifier


def ignore(_mask: int) -> None:
    """The callback of a descriptor that only wakes the selector (the loop step reads it)."""


EXIT_CONFIG = 2  # a usage or configuration error: the units do not restart on it (RestartPreventExitStatus=)
EXIT_FOREIGN = 77  # EX_NOPERM: its mailbox belongs to another user (transport.MailboxForeign); not restarted either


def command_line(program: str, description: str) -> argparse.ArgumentParser:
    """A daemon's command line: --config, --check-config and --version (also the source of its man page)."""
    parser = argparse.ArgumentParser(prog=program, description=description)
    parser.add_argument("--config", help="config file (default: $TQ_CONFIG or /etc/tq/tq.toml)")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration as a reload (SIGHUP) would read it, then exit: 0 when it "
                             "loads (silently), 2 naming file, key and reason when it does not (the unit's "
                             "ExecReload= runs this first, so that `systemctl reload` fails on a bad configuration)")
    parser.add_argument("--version", action="version", version=f"{program} {__version__}")
    return parser


def load_config(program: str, path: str | None) -> config.Config | None:
    """The configuration a daemon starts with; None when it does not load (said on stderr: `file: key: reason`),
    before any logging is set up."""
    try:
        return configload.load(path)
    except config.ConfigError as e:
        stderr.line(f"{program}: {e}")
        return None


class StartError(Exception):
    """The daemon cannot start (its state dir or socket is taken); the message says why."""


class Daemon:
    """The loop scaffolding of one daemon. Each registered descriptor's data is a callback taking the mask."""

    RESTART_KEYS: tuple[str, ...] = ("mqueue.prefix", "mqueue.max_message_size", "mqueue.max_messages",
                                      "amqp.url", "amqp.queues", "amqp.heartbeat", "amqp.window", "transport.kind",
                                      "transport.url", "transport.machine")
    """Dotted config keys that take effect only at the next start (a reload keeps the running value)."""
    HOST = False  # tq-host (its mailboxes: transport.for_config)

    def __init__(self, program: str, cfg: config.Config, config_path: str | None,
                 captured_events: list[Any] | None = None, mailboxes: transport.Mailboxes | None = None) -> None:
        """`captured_events`: a list that every job event's fields are appended to (tq-host's event stream);
        `mailboxes`: where the mailboxes live (made from `cfg` unless given)."""
        self.cfg, self.config_path = cfg, config_path
        self.logger = log.setup(program, cfg.log.level)
        self.events = log.JobEvents(self.logger, cfg.log.job_events, cfg.log.job_events_per_second, captured_events,
                                    until_commit=self.HOST)
        self.malformed = log.Burst(self.logger)
        self.notifier = Notifier()
        self.refused = ""  # why the last reload was refused (FILE: KEY: reason), until one succeeds
        self.sel = transport.selector(cfg, self.HOST)
        self.stop_requested = self.reload_requested = False
        self._wake_r = -1  # the signal wake-up pipe's read end (watch_signals)
        # Where the mailboxes live, as granted for the configuration the daemon starts with ([mqueue] takes
        # effect at the next start).
        self.mailboxes = (mailboxes if mailboxes is not None
                          else transport.for_config(cfg, self.sel, self.logger, program, self.HOST))
        self.noted: tuple[str, ...] = ()  # the notes last logged (note_limits)

    def watch_signals(self) -> None:
        """SIGTERM and SIGINT ask to stop, SIGHUP to reload; each also wakes the selector."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only set a flag: the main loop does the work.
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requested = True

    def _drain_wakeups(self, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def select(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a registered descriptor; run the callback of each that is ready."""
        for key, mask in self.sel.select(timeout):
            key.data(mask)

    @property
    def serviced(self) -> bool:
        """The transport has a connection of its own (a broker's), serviced by the selector (transport/serviced.py).
        (A property, not an attribute: tests/unit/test_attribute_budget.py.)"""
        return not isinstance(self.mailboxes, transport.Connectionless)

    def wait_for_host(self) -> transport.Mailbox | None:
        """A worker's start: open the host's mailbox, waiting (and pinging the watchdog) until tq-host has created
        it; one of another user's is waited out too, said in the log and STATUS. None if asked to stop meanwhile."""
        said = ""
        while not self.stop_requested:
            try:
                return self.mailboxes.reach_host()
            except transport.MailboxForeign as e:  # tq-host refuses to start on it too: said until it is removed
                if str(e) != said:
                    self.logger.warning("waiting for tq-host: %s", e)
                    self.notifier.status(f"waiting for tq-host: {e}")
                    said = str(e)
            except transport.MailboxAccessDenied:
                raise
            except transport.MailboxError as e:
                if str(e) != said:
                    self.logger.info("waiting for tq-host: %s", e)
                    self.notifier.status("waiting for tq-host")
                    said = str(e)
            self.notifier.tick(time.monotonic())
            self.select(0.2)
        return None

    def wait_connected(self, most: float) -> bool:
        """Wait (pinging the watchdog, STATUS saying what for) until the transport carries messages (a broker's
        connection is up), or for `most` seconds: then the daemon goes on, its messages wait for the connection,
        and its STATUS says what it waits for. False if asked to stop meanwhile."""
        said = ""
        deadline = time.monotonic() + most
        while (waiting := self.mailboxes.waiting_for) and not self.stop_requested and time.monotonic() < deadline:
            if waiting != said:
                self.notifier.status(waiting)
                said = waiting
            self.notifier.tick(time.monotonic())
            self.select(0.2)
        return not self.stop_requested

    def reload(self) -> None:
        """SIGHUP: RELOADING=1, read the configuration again, apply it, READY=1.

        A configuration that does not load is logged and the running one kept (STATUS= then ends with "reload
        refused: FILE: KEY: reason" until a reload succeeds). Keys in RESTART_KEYS keep their running value, and
        the log names those that changed.
        """
        self.reload_requested = False
        self.notifier.reloading()
        try:
            try:
                new = configload.load(self.config_path)
            except config.ConfigError as e:
                self.logger.error("reload refused, keeping the running configuration: %s", e)
                # STATUS says it too, until a reload succeeds: the configuration on disk is not the one running
                self.refused = " ".join(str(e).split())
                self.notifier.note = "reload refused: " + self.refused
                return
            self.refused = self.notifier.note = ""
            granted = self.granted(new, *transport.granted(new, self.HOST))
            new, pending = configload.keep_for_restart(self.cfg, granted, self.RESTART_KEYS)
            if pending:
                self.logger.warning("%s changed: takes effect at the next restart", ", ".join(pending))
            self.apply(new)
            if self.mailboxes.secrets_changed():
                self.logger.info("broker password changed: used from the next connection")
            self.cfg = new
            logging.getLogger().setLevel(new.log.level.upper())
            self.events.configure(new.log.job_events, new.log.job_events_per_second)
            self.logger.info("configuration reloaded from %s", ", ".join(new.files))
        finally:
            self.notifier.ready(self.status_text())

    def granted(self, cfg: config.Config, message_size: int, notes: tuple[str, ...]) -> config.Config:
        """`cfg` with the message size the mailboxes grant; each of their notes (a limit granted below the
        configuration) is logged once (and shown by `tqctl status`)."""
        self.note_limits(notes)
        return replace(cfg, mqueue=replace(cfg.mqueue, max_message_size=message_size))

    def note_limits(self, notes: tuple[str, ...]) -> None:
        """Log each note not among those logged last."""
        for note in notes:
            if note not in self.noted:
                self.logger.warning("%s", note)
        self.noted = notes

    def apply(self, new: config.Config) -> None:
        """Put a reloaded configuration into effect (before it becomes `self.cfg`)."""

    def status_text(self) -> str | None:
        """The one-line STATUS= summary."""
        return None
