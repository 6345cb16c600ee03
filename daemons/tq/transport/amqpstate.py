"""The AMQP session's small parts: its retry delays and a failure said in one line.

pika reports failures as exceptions passed to callbacks, nested (a connection error holding the socket's), and
logs them itself with tracebacks; tq silences pika's logger (transport/amqp.py) and says each in one line.
"""

from __future__ import annotations

import pika.exceptions


class Backoff:
    """Delays doubling from `first` up to `cap`: 1, 2, 4 ... 30 s for the connection; reset once ready."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def describe(err: BaseException, where: str) -> str:
    """`err` in one line, for the log and the daemon's STATUS; `where` is the broker's masked URL."""
    e = pika.exceptions
    if isinstance(err, (e.ProbableAuthenticationError, e.AuthenticationError)):
        return f"the broker at {where} refused the login (wrong user or password?)"
    if isinstance(err, e.ProbableAccessDeniedError):
        return f"the broker at {where} refused access to the virtual host (not permitted for this user?)"
    if isinstance(err, (e.ConnectionClosed, e.ChannelClosed)):
        return one_line(f"closed by the broker: {err.reply_code} {err.reply_text}")
    if isinstance(err, e.AMQPHeartbeatTimeout):
        return f"no heartbeat from the broker at {where}: connection dropped"
    cause = os_error(err)
    if cause is not None:
        return one_line(f"cannot reach the broker at {where}: {cause.strerror or cause}")
    if isinstance(err, e.StreamLostError):
        return one_line(f"connection to the broker at {where} lost: {err}")
    return one_line(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def os_error(err: BaseException) -> OSError | None:
    """The socket error inside one of pika's (in its args or its cause), if any."""
    seen: list[object] = [err]
    while seen:
        item = seen.pop()
        if isinstance(item, OSError):
            return item
        if isinstance(item, BaseException):
            seen.extend(item.args)
            if item.__cause__ is not None:
                seen.append(item.__cause__)
    return None


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]
