"""Mailboxes through an AMQP broker (RabbitMQ): tq-host and workers on other machines, one connection each, driven
by the daemon's own selector loop (amqploop.py; the connection and its channels: amqpsession.py, amqpconsume.py).

Names. A mailbox is a durable classic queue named as the POSIX one without its slash: `PREFIX.host` (tq-host's;
results wait in it while tq-host is down) and `PREFIX.w.INSTANCE` (a worker's inbox), where a remote worker's
instance carries its machine's name (`machine_instance`: "1@render-3"), so that names are unique across machines.
Classic, with x-max-priority 2, because quorum queues refuse priorities on RabbitMQ 3.10: Cancel goes ahead of
jobs, jobs ahead of the Sync fence, as on the POSIX queues. Messages are persistent.

Sending. `send` publishes with publisher confirms. It returns False, as a full POSIX queue does, while the
mailbox already has `max_messages` messages awaiting their confirm (or the connection `amqp.window`): the
caller keeps the message and tries again, as it does today. Taken messages wait, in order, while the connection
is down (bounded the same way) and are published once it is back. A confirm is the proof that the broker keeps
the message; what is unconfirmed when a channel or the connection goes is published again, in order, once it
is back, so the receiver may see it twice. What a process held unconfirmed when it died is lost, as what it
held in memory is: tq-host commits an assignment before sending it, and the Sync fence finds what was lost.

Receiving. Deliveries wait in the process, ordered by tq's own priority (kept in a header), and `fileno()` is a
pipe readable while any wait (never writable: a full window is waited out on pika's socket, which wakes the
same selector). A delivery is acknowledged when the daemon takes it with `receive()`, the moment mq_receive
would remove it from a POSIX queue: a job message is acknowledged once the worker holds it, and liveness comes
from tq's own heartbeats and leases, never from the broker's delivery-acknowledgement timeout (consumer_timeout;
30 minutes by default and broker-wide on RabbitMQ 3.10), which a long job would otherwise trip. The daemons take
what arrives at every step (tq-worker too while a job runs, to see a Cancel at once), so nothing waits
unacknowledged for long. Deliveries not yet taken when their channel goes are dropped: the broker hands them out
again. `close()` hands back what was not taken.

Duplicates. At-least-once is the contract (SPEC): a message may arrive twice after a reconnect (re-sent while
unconfirmed, or an acknowledgement lost with the connection). tq's protocol already tolerates it: a Jobs
message carries each job's id and attempt, and tq-host only takes a result or a release for the attempt it
assigned to that worker (a second one, or one from a worker presumed gone, is ignored as late); a Cancel names
an attempt; Sync carries the fence's token and the host answers only the current one; heartbeats and hellos are
states, not increments.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

from .. import config
from .amqpconsume import Consumer, Consuming
from .amqploop import AmqpLoop
from .amqpparams import BrokerParameters
from .amqpsession import Outgoing, Session
from .mailbox import Mailbox, Mailboxes

HOST_PREFETCH = 256  # deliveries in flight to tq-host unacknowledged: it takes them at every step


class AmqpMailbox:
    """One handle of a queue on the broker: the owner's (tq-host's own, a worker's inbox) consumes it; the other
    side's only publishes to it."""

    def __init__(self, name: str, depth: int, session: Session, consuming: Consuming, prefetch: int | None) -> None:
        self.name, self.depth, self.session, self.consuming = name, depth, session, consuming
        self.unconfirmed = 0
        self.local: list[tuple[int, int, Any, int, bytes]] = []  # (-priority, seq, channel, tag, body)
        self.seq = itertools.count()
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.consumer = None if prefetch is None else Consumer(name, prefetch, self._arrived, self._lost)
        session.declare(name)
        if self.consumer is not None:
            consuming.consume(self.consumer)

    @property
    def max_messages(self) -> int:
        return self.depth

    @property
    def waiting(self) -> int:
        """Deliveries here, not yet taken."""
        return len(self.local)

    def send(self, data: bytes, priority: int) -> bool:
        if self.unconfirmed >= self.depth or not self.session.can_publish():
            return False
        self.unconfirmed += 1
        self.session.publish(Outgoing(self.name, data, priority, self._settled))
        return True

    def receive(self) -> bytes | None:
        if not self.local:
            return None
        _, _, channel, tag, body = heapq.heappop(self.local)
        if not self.local:
            self._signal(False)
        self.consuming.ack(channel, tag)
        return body

    def fileno(self) -> int:
        return self.r

    def close(self) -> None:
        if self.consumer is not None:
            self.consuming.stop_consuming(self.consumer)
            for _, _, channel, tag, _ in sorted(self.local, key=lambda held: held[:2]):
                self.consuming.requeue(channel, tag)
            self.local.clear()
            self.consumer = None
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _settled(self) -> None:
        self.unconfirmed -= 1

    def _arrived(self, channel: Any, tag: int, priority: int, body: bytes) -> None:
        if not self.local:
            self._signal(True)
        heapq.heappush(self.local, (-priority, next(self.seq), channel, tag, body))

    def _lost(self) -> None:
        """The consume channel went: the broker gives what it had delivered to someone again."""
        if self.local:
            self.local.clear()
            self._signal(False)

    def _signal(self, readable: bool) -> None:
        try:
            if readable:
                os.write(self.w, b"x")
            else:
                os.read(self.r, 64)
        except (BlockingIOError, OSError):
            pass


class AmqpMailboxes:
    """The mailboxes of one configuration on the broker at `url`, over one connection on `loop` (which the
    daemon's step drives). Connecting starts with the first mailbox opened; `status` and `error` say where the
    connection stands, in one line with the password masked."""

    def __init__(self, cfg: config.Config, url: config.BrokerUrl, loop: AmqpLoop,
                 logger: logging.Logger | None = None, connection_name: str = "tq") -> None:
        self.cfg, self.url, self.loop = cfg, url, loop
        self.logger = logger or logging.getLogger("tq.amqp")
        logging.getLogger("pika").setLevel(logging.CRITICAL)  # it logs tracebacks; we log one line per event
        self.message_size = cfg.mqueue.max_message_size
        self.notes: tuple[str, ...] = ()
        self.params = BrokerParameters(url, round(cfg.amqp.heartbeat), connection_name)
        self.session = Session(loop, self.params, url.masked(), cfg.amqp.window, self.logger)
        self.started = False

    @property
    def status(self) -> str:
        return self.session.status

    @property
    def error(self) -> str:
        return self.session.error

    @property
    def ready(self) -> bool:
        return self.session.ready

    @property
    def waiting_for(self) -> str:
        return "" if self.session.ready else self.session.status

    def heard(self) -> int:
        return self.session.heard()

    def secrets_changed(self) -> bool:
        return self.params.password_changed()

    def unsettled(self) -> int:
        return len(self.session.unconfirmed) + len(self.session.resend)

    def losses(self) -> int:
        return self.session.counts["cancelled"]  # the broker cancels a consumer when its queue is deleted

    def open_host(self, drained: list[bytes] | None = None) -> AmqpMailbox:
        """tq-host's own mailbox, consumed. An AMQP queue has no dimensions to change, so nothing is drained."""
        return self._open(self.host_queue, self.cfg.mqueue.max_messages, HOST_PREFETCH)

    def open_inbox(self, instance: str) -> AmqpMailbox:
        """tq-host's handle of a worker's inbox: it declares the queue (so messages wait for a worker that is
        away) and publishes to it; the worker's `max_messages` bounds what it takes, the window what is sent."""
        return self._open(self.inbox(instance), self.cfg.amqp.window, None)

    def create_inbox(self, instance: str, depth: int, drained: list[bytes] | None = None) -> AmqpMailbox:
        return self._open(self.inbox(instance), depth, depth)

    def reach_host(self) -> AmqpMailbox:
        """A worker's handle of tq-host's mailbox, declared here too: results wait in it while tq-host is down."""
        return self._open(self.host_queue, self.cfg.mqueue.max_messages, None)

    def host_replaced(self, held: Mailbox) -> bool:
        """Never: a message is published to the queue's name, whichever queue has it now."""
        return False

    def depth_bounds(self) -> str:
        return f"the broker's confirm window (amqp.window {self.cfg.amqp.window})"

    def close(self) -> None:
        self.session.close()

    @property
    def host_queue(self) -> str:
        return self.cfg.host_queue.lstrip("/")

    def inbox(self, instance: str) -> str:
        return self.cfg.inbox(instance).lstrip("/")

    def _open(self, name: str, depth: int, prefetch: int | None) -> AmqpMailbox:
        if not self.started:
            self.started = True
            self.session.start()
        return AmqpMailbox(name, depth, self.session, self.session.consuming, prefetch)


if TYPE_CHECKING:  # mypy checks that these implement the interface
    _mailboxes: type[Mailboxes] = AmqpMailboxes
    _mailbox: type[Mailbox] = AmqpMailbox
