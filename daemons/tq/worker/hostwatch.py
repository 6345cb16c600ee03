"""Whether tq-host runs, as a worker on its machine sees it.

The host's POSIX mailbox outlives tq-host, so a worker's sends do not tell: its heartbeats just pile up there.
The control socket does: a connect reaches a running tq-host (SO_PEERCRED names its pid) and is refused once it
is gone. The worker connects once, then watches that pid through a pidfd in its selector, which polls readable
when tq-host exits: nothing per job or per step. While tq-host is gone, the worker tries the socket again at each
heartbeat. It logs one line when it loses tq-host and one when it finds it again; STATUS says what it waits for.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable

GONE = (errno.ECONNREFUSED, errno.ENOENT)  # nothing listens on the socket: tq-host is not running


class HostWatch:
    def __init__(self, path: str, sel: selectors.BaseSelector, logger: logging.Logger,
                 wake: Callable[[], None]) -> None:
        """`path`: tq-host's control socket; `wake`: called (from the selector) when tq-host exits, to have the
        worker's loop look (at its next heartbeat, made due now)."""
        self.path, self.sel, self.logger, self.wake = path, sel, logger, wake
        self.pidfd = -1  # polls readable when the tq-host found last exits
        self.pid = 0
        self.exited = False  # set by the selector's callback; the loop logs it
        self.waiting_for = ""  # what STATUS says while tq-host is gone ("" while it runs, or cannot be told)

    def start(self) -> None:
        """At the worker's start: look for tq-host (its mailbox exists, but it may not be running)."""
        pid = self._connect()
        if pid is None:
            self._lost("tq-host is not running")
        else:
            self._found(pid)

    def check(self) -> bool:
        """At each heartbeat: take in tq-host's exit, or look for it while it is gone (or runs with no pidfd to
        tell when it exits). True when the answer changed: STATUS then says so at once."""
        if self.exited:
            self._forget()
            self._lost(f"tq-host (pid {self.pid}) exited")
            return True
        if self.pidfd >= 0:
            return False
        pid = self._connect()
        if pid is None:
            if self.waiting_for:
                return False
            self._lost("tq-host is gone")
            return True
        was_gone = bool(self.waiting_for)
        if was_gone:
            self.logger.info("found tq-host again (pid %d)", pid)
        self._found(pid)
        return was_gone

    def close(self) -> None:
        self._forget()

    def _connect(self) -> int | None:
        """tq-host's pid (0: it runs, its pid unknown), or None when nothing listens on its socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
            pid: int = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))[0]
            return pid
        except OSError as e:  # EAGAIN (its backlog is full: busy, not gone), EACCES...: cannot be told
            return None if e.errno in GONE else 0
        finally:
            sock.close()

    def _found(self, pid: int) -> None:
        self.waiting_for, self.pid = "", pid
        if pid <= 0:
            return
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:  # it exited meanwhile (the next heartbeat finds the socket refused), or no pidfd here
            return
        self.sel.register(self.pidfd, selectors.EVENT_READ, self._on_exit)

    def _on_exit(self, _mask: int) -> None:
        # Only a flag (and the next heartbeat made due): the loop does the rest.
        self.exited = True
        self.wake()

    def _lost(self, why: str) -> None:
        self.waiting_for = f"waiting for tq-host: {why}"
        self.logger.warning("%s; waiting for it (results and reports wait here, no job is lost)", why)

    def _forget(self) -> None:
        if self.pidfd >= 0:
            self.sel.unregister(self.pidfd)
            os.close(self.pidfd)
        self.pidfd, self.exited = -1, False
