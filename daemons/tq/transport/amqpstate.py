"""The AMQP session's small parts: its retry delays, the arguments its queues are declared with, and a failure
said in one line.

pika reports failures as exceptions passed to callbacks, nested (a connection error holding the socket's), and
logs them itself with tracebacks; tq silences pika's logger (transport/amqp.py) and says each in one line.
"""

from __future__ import annotations

import socket
import ssl

import pika.exceptions

from .amqpparams import reason

QUEUE_ARGUMENTS = {"x-queue-type": "classic", "x-max-priority": 2}  # quorum queues refuse x-max-priority on 3.10
CHANNEL_RETRY = 0.2  # a channel the broker closed is reopened after this (the connection is up)


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
    err = unwrap(err)
    e = pika.exceptions
    if isinstance(err, (e.ProbableAuthenticationError, e.AuthenticationError)):
        return f"the broker at {where} refused the login (wrong user or password?)"
    if isinstance(err, e.ProbableAccessDeniedError):
        return f"the broker at {where} refused access to the virtual host (not permitted for this user?)"
    if isinstance(err, (e.ConnectionClosed, e.ChannelClosed)):
        return one_line(f"closed by the broker: {err.reply_code} {err.reply_text}")
    if isinstance(err, e.IncompatibleProtocolError):  # (the port took the connection, then closed it unanswered)
        return f"the server at {where} does not speak AMQP 0-9-1: is that the broker's port (5672; amqps 5671)?"
    if isinstance(err, e.AMQPHeartbeatTimeout):
        return f"no heartbeat from the broker at {where}: connection dropped"
    if isinstance(err, ssl.SSLCertVerificationError):
        return one_line(f"the broker at {where} is not trusted: {err.verify_message or err.reason} "
                        "(check ca_file, and that the broker's certificate names the URL's host)")
    if isinstance(err, ssl.SSLError):
        return one_line(f"TLS with the broker at {where} failed: {reason(err)} (does that port take TLS?)")
    if isinstance(err, socket.gaierror):
        return one_line(f"cannot resolve the broker's host in {where}: {err.strerror or err}")
    if isinstance(err, OSError):
        return one_line(f"cannot reach the broker at {where}: {err.strerror or err}")
    if isinstance(err, e.StreamLostError):
        return one_line(f"connection to the broker at {where} lost: {err}")
    return one_line(f"{type(err).__name__}: {err}" if str(err) else f"{type(err).__name__} ({where})")


def unwrap(err: BaseException) -> BaseException:
    """The failure inside pika's wrappers: a connection workflow's last attempt, a phase's error, a connection
    error's argument."""
    for _ in range(10):
        inner = getattr(err, "exceptions", None)  # the workflow's attempts
        if isinstance(inner, tuple) and inner and isinstance(inner[-1], BaseException):
            err = inner[-1]
            continue
        single = getattr(err, "exception", None)  # a phase's (socket connect, transport, AMQP handshake)
        if isinstance(single, BaseException):
            err = single
            continue
        if type(err) is pika.exceptions.AMQPConnectionError and len(err.args) == 1 \
                and isinstance(err.args[0], BaseException):
            err = err.args[0]
            continue
        break
    return err


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]
