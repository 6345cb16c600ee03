"""sd_notify for both daemons: readiness, status, watchdog, reload and stop.

Without NOTIFY_SOCKET (foreground runs) every call is a no-op. The watchdog is
pinged only from the main loop's step (`tick`), so a hung loop stops the pings
and systemd's WatchdogSec catches it.
"""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        if self._sd is not None and self._sd.socket is not None:
            self._sd.socket.settimeout(0.5)  # never let a slow reader of the socket stall the main loop
        self.watchdog_interval = self._watchdog_interval()
        self._next_ping = 0.0
        self._status = ""
        self._next_status = 0.0
        self.note = ""  # said after every STATUS= until cleared (a refused reload), one line

    @staticmethod
    def _watchdog_interval() -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def _send(self, text: str) -> None:
        if self._sd is not None:
            self._sd.notify(text)

    def ready(self, status: str | None = None) -> None:
        status = self._noted(status or "")
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if status:
            self._status = status

    def _noted(self, text: str) -> str:
        return f"{text}; {self.note}" if text and self.note else text or self.note

    def status_due(self, now: float) -> bool:
        """Whether status(text, now) may send now: callers build the text only then (at most twice a second)."""
        return self.enabled and now >= self._next_status

    def status(self, text: str, now: float | None = None) -> None:
        """Send STATUS= when it changed; when `now` is given, look at most twice a second."""
        if now is not None:
            if now < self._next_status:
                return
            self._next_status = now + 0.5
        text = self._noted(text)
        if text != self._status:
            self._status = text
            self._send(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def tick(self, now: float) -> float | None:
        """Ping the watchdog when due; return seconds until the next ping (None: no watchdog)."""
        if self.watchdog_interval is None:
            return None
        if now >= self._next_ping:
            self._send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval
        return self._next_ping - now


def child_environment() -> dict[str, str]:
    """The environment for handler processes, without our notify and watchdog variables."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(key, None)
    return env
