"""One AMQP connection on the daemon's loop: a publish channel in confirm mode, a consume channel (amqpconsume.py),
the queues declared on both, reconnects with backoff, and every close the broker makes seen at once through pika's
callbacks.

Two channels, so that a channel error on the consuming side (a stale acknowledgement, a consumer the broker
cancelled) cannot discard the publisher's outstanding confirms. What was published and not yet confirmed when
a channel or the connection went is published again once the publish channel is back: a confirm is the only
proof a message is safe (the broker kept some unconfirmed messages after a restart and dropped others), so the
receiver may see a message twice (transport/amqp.py says why tq's protocol tolerates that).

Consuming is started again on every consume channel the session opens (amqpconsume.py). A channel the broker
closes is reopened after its backoff, while the connection is up. Nothing here blocks; pika's callbacks only
record and stage work.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.spec

from .amqpconsume import Consuming, OnOpen
from .amqploop import AmqpLoop
from .amqpstate import CHANNEL_RETRY, QUEUE_ARGUMENTS, Backoff, describe
from .mailbox import MailboxError


@dataclass(eq=False)
class Outgoing:
    """One message to publish, kept until the broker confirms it."""

    queue: str
    body: bytes
    priority: int  # tq's mailbox priority (kept in a header: the local order is exact)
    on_settled: Callable[[], None]  # confirmed: the sender's window has room again


class Session:
    """The connection and its two channels (see the module's docstring). `status` says in one line where it
    stands; `error` is the last failure, one line, password never included."""

    def __init__(self, loop: AmqpLoop, params: Callable[[], pika.ConnectionParameters], where: str, window: int,
                 logger: logging.Logger) -> None:
        """`params`: called at each connection attempt (its files are read then); MailboxError fails the attempt."""
        self.loop, self.params, self.where, self.window, self.logger = loop, params, where, window, logger
        self.conn: Any = None
        self.pub: Any = None  # the publish channel, once in confirm mode with the queues declared
        self.pub_open: Any = None  # the publish channel opening or open (None: none; a closed one is retired)
        self.declared: dict[str, None] = {}  # queues to declare after each reopen (ordered)
        self.unconfirmed: dict[int, Outgoing] = {}  # publish sequence number -> message
        self.resend: deque[Outgoing] = deque()  # to publish once the publish channel is back
        self.next_seq = 1
        self.backoff = Backoff()
        self.pub_backoff = Backoff(CHANNEL_RETRY)
        self.error = ""
        self.status = f"connecting to {where}"
        self.closing = False
        self.counts = {"connects": 0, "resent": 0, "returned": 0, "nacked": 0, "cancelled": 0}
        self.received = 0  # bytes the broker sent on connections closed since (heard)
        self.consuming = Consuming(self.counts, self._maybe_ready, self._reopen, self._recycle, logger)

    # ---- what the mailboxes call -------------------------------------------

    @property
    def ready(self) -> bool:
        """Both channels up: publishing and every consumer on."""
        return self.pub is not None and self.consuming.sub is not None

    def heard(self) -> int:
        """Bytes received from the broker so far, on every connection (any frame: deliveries, confirms, replies,
        the broker's heartbeats): a count that changes whenever the broker was heard from."""
        return self.received + (self.conn.bytes_received if self.conn is not None else 0)

    def start(self) -> None:
        if self.closing:
            return  # closed while a retry waited
        self.counts["connects"] += 1
        try:
            params = self.params()
        except MailboxError as e:  # a password or TLS file that cannot be read: a wait, as a refused login is
            self._lost(str(e))
            return
        self.conn = pika.SelectConnection(params, on_open_callback=self._on_open,
                                          on_open_error_callback=self._on_open_error,
                                          on_close_callback=self._on_closed, custom_ioloop=self.loop.services())
        self.conn.add_on_connection_blocked_callback(self._on_blocked)
        self.conn.add_on_connection_unblocked_callback(self._on_unblocked)

    def can_publish(self) -> bool:
        """Room in the window: messages taken and not yet confirmed, published or waiting for a channel."""
        return len(self.unconfirmed) + len(self.resend) < self.window

    def publish(self, message: Outgoing) -> None:
        """Publish on the confirm channel, or keep it, in order, until there is one."""
        if self.pub is None or self.resend:
            self.resend.append(message)
            return
        props = pika.BasicProperties(delivery_mode=2, priority=broker_priority(message.priority),
                                     headers={"tq-priority": message.priority})
        try:
            self.pub.basic_publish("", message.queue, message.body, props, mandatory=True)
        except (pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError):
            self.resend.append(message)  # closing under us: its close callback is on its way
            return
        self.unconfirmed[self.next_seq] = message
        self.next_seq += 1

    def declare(self, queue: str) -> None:
        """Declare `queue` now (if a channel is open or opening: pika queues the method) and after every reopen."""
        if queue not in self.declared:
            self.declared[queue] = None
            if self.pub_open is not None and self.pub_open.is_open:
                self.pub_open.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)

    def close(self) -> None:
        self.closing = True
        if self.conn is not None and not (self.conn.is_closing or self.conn.is_closed):
            self.conn.close()

    # ---- the connection ----------------------------------------------------

    def _on_open(self, conn: Any) -> None:
        self.logger.info("connected to the broker at %s", self.where)
        self.status = f"connected to {self.where}, opening channels"
        conn.channel(on_open_callback=self._on_pub_channel)
        conn.channel(on_open_callback=self.consuming.on_channel)

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        """A resource alarm (memory, disk) on the broker: it takes no publish until it clears; sends wait in the
        window, and the window's bound makes `send` refuse once it is full."""
        self.status = f"the broker at {self.where} blocks publishing: {getattr(frame.method, 'reason', '')}"
        self.logger.warning("%s", self.status)

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        self.logger.info("the broker at %s takes publishes again", self.where)
        self._maybe_ready()

    def _on_open_error(self, _conn: Any, err: BaseException) -> None:
        self._lost(describe(err, self.where))

    def _on_closed(self, _conn: Any, reason: BaseException) -> None:
        self._lost(describe(reason, self.where))

    def _lost(self, why: str) -> None:
        if self.conn is not None:
            self.received += self.conn.bytes_received
        self.conn = None
        self._retire_pub()
        self.consuming.retire()
        if self.closing:
            self.status = "closed"
            return
        delay = self.backoff.next()
        self.error = why
        self.status = f"waiting for the broker: {why}; retrying in {delay:g}s"
        self.logger.warning("%s", self.status)
        self.loop.call_later(delay, self.start)

    # ---- the publish channel -----------------------------------------------

    def _on_pub_channel(self, ch: Any) -> None:
        self.pub_open = ch
        ch.add_on_close_callback(self._on_pub_closed)
        ch.add_on_return_callback(self._on_returned)
        ch.confirm_delivery(ack_nack_callback=lambda frame: self._on_confirm(ch, frame),
                            callback=lambda _frame: self._declare_all(ch))

    def _declare_all(self, ch: Any) -> None:
        queues = list(self.declared)
        if not queues:
            self._pub_ready(ch)
            return
        for queue in queues[:-1]:
            ch.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        ch.queue_declare(queues[-1], durable=True, arguments=QUEUE_ARGUMENTS,
                         callback=lambda _frame: self._pub_ready(ch))

    def _pub_ready(self, ch: Any) -> None:
        if ch is not self.pub_open:
            return  # retired while it opened
        self.pub, self.next_seq = ch, 1
        self.pub_backoff.reset()
        resend, self.resend = self.resend, deque()
        if resend:
            self.counts["resent"] += len(resend)
            self.logger.info("publish channel open: sending %d message(s) held until it was (made before it opened, "
                             "or sent and not yet confirmed when the one before closed); none is lost", len(resend))
        for message in resend:
            self.publish(message)
        self._maybe_ready()

    def _on_confirm(self, ch: Any, frame: Any) -> None:
        if ch is not self.pub:
            return  # a retired channel's: what it had not confirmed is being published again
        method = frame.method
        seqs = [s for s in self.unconfirmed if s <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for seq in seqs:
            message = self.unconfirmed.pop(seq, None)
            if message is None:
                continue
            if nacked:  # the broker could not take it: again, after the channel's retry delay
                self.counts["nacked"] += 1
                self.loop.call_later(CHANNEL_RETRY, self._again(message))
            else:
                message.on_settled()

    def _again(self, message: Outgoing) -> Callable[[], None]:
        return lambda: self.publish(message)

    def _on_returned(self, ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        """A message no queue took (its queue was deleted under us). The confirm that follows a return would
        call it safe, so the channel is retired at once (what it has not confirmed, this one included, is
        published again) and the new channel declares the queue again."""
        self.counts["returned"] += 1
        self.logger.warning("the broker returned a message for %s (%s): declaring it again", method.routing_key,
                            method.reply_text)
        if ch is self.pub_open:
            self._retire_pub()
            self._recycle(ch, self.pub_backoff, self._on_pub_channel, "publish", "a returned message")

    def _on_pub_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self.pub_open:
            return  # retired already
        self._retire_pub()
        self._reopen(self.pub_backoff, self._on_pub_channel, "publish", reason)

    def _retire_pub(self) -> None:
        """The publish channel is gone or going: what awaited a confirm goes first in line to be published again,
        in the order it was sent."""
        self.pub = self.pub_open = None
        if self.unconfirmed:
            self.resend.extendleft(reversed([self.unconfirmed[s] for s in sorted(self.unconfirmed)]))
            self.unconfirmed.clear()

    # ---- either channel ----------------------------------------------------

    def _maybe_ready(self) -> None:
        if self.ready:
            self.backoff.reset()
            self.error = ""
            self.status = f"connected to {self.where}"

    def _recycle(self, ch: Any, backoff: Backoff, on_open: OnOpen, which: str, after: str) -> None:
        """Close a retired channel and open its successor."""
        if ch.is_open:
            ch.close(reply_text=f"retired after {after}")
        self._reopen(backoff, on_open, which, None)

    def _reopen(self, backoff: Backoff, on_open: OnOpen, which: str, reason: BaseException | None) -> None:
        conn = self.conn
        if conn is None or not conn.is_open or self.closing:
            return  # the connection's own close (or ours) takes it from here
        delay = backoff.next()
        if reason is not None:
            self.status = f"the {which} channel closed ({describe(reason, self.where)}); reopening in {delay:g}s"
            self.logger.warning("%s", self.status)

        def reopen() -> None:
            if self.conn is conn and conn.is_open:
                conn.channel(on_open_callback=on_open)
        self.loop.call_later(delay, reopen)


def broker_priority(priority: int) -> int:
    """tq's mailbox priorities (the Sync fence 0, jobs 1..2001, Cancel 3000) as the queue's three levels."""
    return 0 if priority <= 0 else 2 if priority >= 3000 else 1
