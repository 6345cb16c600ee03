"""Logging: journald with TQ_* fields when stderr is the journal, plain stderr lines otherwise.

Job events (submitted, assigned, started, done, failed, dead, ...) are one line
each, named as the event stream names them (events.STREAM_NAMES: what tq-host
calls "dispatched", "retrying" and "lost" inside is "assigned", "failed" and
"failed" there and in the journal), with the fields TQ_JOB_ID, TQ_TASK,
TQ_QUEUE, TQ_WORKER and TQ_ATTEMPT (never JOB_ID, which systemd uses);
tq-host's lines about a worker or a queue carry its TQ_WORKER or TQ_QUEUE
(extra= at the call). journald drops lines past its rate limit (10,000 per 30 s
per unit by default), so routine job events share a per-second budget
(`log.job_events_per_second`); past it they are counted and
summarised once a second. Failures, retries and deaths are always logged.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from .events import ALWAYS, STREAM_NAMES

_FIELDS = ("TQ_JOB_ID", "TQ_TASK", "TQ_QUEUE", "TQ_WORKER", "TQ_ATTEMPT", "TQ_SCHEDULE")


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to journald (JOURNAL_STREAM=dev:inode matches)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k[3:].lower()}={getattr(record, k)}" for k in _FIELDS if hasattr(record, k))
        text = f"{record.name}: {record.levelname.lower()}: {record.getMessage()}"
        if fields:
            text += f" [{fields}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _journal_handler(program: str) -> logging.Handler | None:
    """python-systemd's JournalHandler (optional at import; the Debian package depends on it)."""
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=program)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup(program: str, level: str = "info") -> logging.Logger:
    """Configure the root logger once for this process and return the program's logger."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler | None = _journal_handler(program) if stderr_is_journal() else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    return logging.getLogger(program)


def name_worker(worker: str) -> None:
    """Every journal line of this process carries TQ_WORKER=`worker`: a worker through a broker is "1@render-3"
    to tq-host and in its job lines, while its unit's LogExtraFields= names only the instance ("1")."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.StreamHandler):  # (the journal's; stderr lines stay as they are)
            handler.addFilter(_Field("TQ_WORKER", worker))


class _Field(logging.Filter):
    """Sets a journal field on each record that does not carry it already."""

    def __init__(self, name: str, value: str) -> None:
        super().__init__()
        self.field, self.value = name, value

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, self.field):
            setattr(record, self.field, self.value)
        return True


class JobEvents:
    """One log line per job event, within a per-second budget for the routine ones."""

    def __init__(self, logger: logging.Logger, mode: str = "all", per_second: int = 200,
                 capture: list[Any] | None = None, until_commit: bool = False) -> None:
        """`until_commit` (tq-host): the lines wait for `release` (its commit) or go with `drop` (a failed one):
        the journal tells only what the store holds."""
        self.logger, self.mode, self.per_second = logger, mode, per_second
        # (level, message, its arguments, its fields): job event lines and the host's other lines about what the
        # step changed in the store (a queue paused), held until its commit
        self.held: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] | None = [] if until_commit else None
        # tq-host's event stream (stream.EventStream.events): every event's fields are appended, logged or not,
        # in events.py's order (TIME, NAME, JOB, TASK, QUEUE, ATTEMPT, WORKER, DETAIL).
        self.capture = capture
        self.now = 0.0  # the time the captured events carry: tick sets it once a step (tq-host: time.time())
        self._window = int(time.monotonic())  # the second whose budget is being used (tick)
        self._used = 0
        self.suppressed = 0

    def configure(self, mode: str, per_second: int) -> None:
        self.mode, self.per_second = mode, per_second

    def event(self, event: str, job_id: int, task: str, queue: str, attempt: int | None = None,
              worker: str | None = None, detail: str = "") -> None:
        if self.capture is not None:
            self.capture.extend((self.now, event, job_id, task, queue, attempt, worker, detail))
        always = event in ALWAYS
        if always:
            if self.mode == "none":
                return
        elif self.mode != "all" or not self._allow():
            return
        extra: dict[str, Any] = {"TQ_JOB_ID": job_id, "TQ_TASK": task, "TQ_QUEUE": queue}
        if attempt is not None:
            extra["TQ_ATTEMPT"] = attempt
        if worker is not None:
            extra["TQ_WORKER"] = worker
        level = logging.WARNING if always else logging.INFO
        args = (job_id, STREAM_NAMES.get(event, event), f": {detail}" if detail else "")  # named as `tqctl events` does
        if self.held is not None:  # (as `line` does, without its call: this is once a job event)
            self.held.append((level, "job %d %s%s", args, extra))
        else:
            self.logger.log(level, "job %d %s%s", *args, extra=extra)

    def line(self, level: int, message: str, args: tuple[Any, ...], extra: dict[str, Any] | None = None) -> None:
        """A line about a change the store is to keep: held as the job events are (tq-host's), else logged."""
        if self.held is not None:
            self.held.append((level, message, args, extra or {}))
        else:
            self.logger.log(level, message, *args, extra=extra)

    def release(self) -> None:
        """The commit of the lines held so far succeeded: log them."""
        if self.held:
            for level, message, args, extra in self.held:
                self.logger.log(level, message, *args, extra=extra)
            self.held.clear()

    def drop(self) -> int:
        """The commit failed: the lines held did not happen. How many job events there were."""
        if not self.held:
            return 0
        n = sum("TQ_JOB_ID" in extra for _, _, _, extra in self.held)
        self.held.clear()
        return n

    def notify(self, event: str, job_id: int, task: str, queue: str, attempt: int | None = None,
               worker: str | None = None) -> None:
        """An event for the stream alone (the journal has said it already in other words)."""
        if self.capture is not None:
            self.capture.extend((self.now, event, job_id, task, queue, attempt, worker, ""))

    def tick(self, wall: float = 0.0) -> None:
        """Once a loop step, before its events: a new second gives a new budget, and the last one's suppressed
        events are summarised (also when no more events come). The clock is read here, once a step, not once
        an event: a step's events count against the second it began in. `wall` (time.time()) is the time the
        step's captured events carry (tq-host's)."""
        self.now = wall
        window = int(time.monotonic())
        if window != self._window:
            self._roll(window)

    def _roll(self, window: int) -> None:
        if self.suppressed:
            self.logger.info("%d routine job events not logged in the last second(s) "
                             "(log.job_events_per_second = %d)", self.suppressed, self.per_second)
            self.suppressed = 0
        self._window, self._used = window, 0

    def _allow(self) -> bool:
        if self._used < self.per_second:
            self._used += 1
            return True
        self.suppressed += 1
        return False


class Burst:
    """Log a recurring problem once per burst (at most once per `interval`), counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger, self.interval = logger, interval
        self.total = 0
        self._since_log = 0
        self._last = -1e9

    def __call__(self, message: str) -> None:
        self.total += 1
        self._since_log += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            more = f" ({self._since_log - 1} more since the last report)" if self._since_log > 1 else ""
            self.logger.warning("%s%s; %d in all", message, more, self.total)
            self._last, self._since_log = now, 0
