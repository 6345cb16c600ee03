"""One AMQP connection on the daemon's loop: a publish channel in confirm mode, a consume channel, the queues
declared on both, reconnects with backoff, and every close the broker makes seen at once through pika's callbacks.

Two channels, so that a channel error on the consuming side (a stale acknowledgement, a consumer the broker
cancelled) cannot discard the publisher's outstanding confirms. What was published and not yet confirmed when
a channel or the connection went is published again once the publish channel is back: a confirm is the only
proof a message is safe (the broker kept some unconfirmed messages after a restart and dropped others), so the
receiver may see a message twice (transport/amqp.py says why tq's protocol tolerates that).

Consuming is a state re-established after every reconnect and every channel loss: each consumer is declared,
given its prefetch and started again. A basic.cancel from the broker (its queue deleted) closes the consume
channel, which takes the same path. Nothing here blocks; pika's callbacks only record and stage work.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pika.spec

from .amqploop import AmqpLoop
from .amqpstate import Backoff, describe
from .mailbox import MailboxError

QUEUE_ARGUMENTS = {"x-queue-type": "classic", "x-max-priority": 2}  # quorum queues refuse x-max-priority on 3.10
CHANNEL_RETRY = 0.2  # a channel the broker closed is reopened after this (the connection is up)


@dataclass(eq=False)
class Outgoing:
    """One message to publish, kept until the broker confirms it."""

    queue: str
    body: bytes
    priority: int  # tq's mailbox priority (kept in a header: the local order is exact)
    on_settled: Callable[[], None]  # confirmed: the sender's window has room again


@dataclass(eq=False)
class Consumer:
    """One queue consumed on the consume channel."""

    queue: str
    prefetch: int
    on_message: Callable[[Any, int, int, bytes], None]  # (channel, delivery tag, priority, body)
    on_lost: Callable[[], None]  # the channel went: its unacknowledged deliveries return to the queue
    tag: str = field(default="")


class Session:
    """The connection and its two channels (see the module's docstring). `status` says in one line where it
    stands; `error` is the last failure, one line, password never included."""

    def __init__(self, loop: AmqpLoop, params: Callable[[], pika.ConnectionParameters], where: str, window: int,
                 logger: logging.Logger) -> None:
        """`params`: called at each connection attempt (its files are read then); MailboxError fails the attempt."""
        self.loop, self.params, self.where, self.window, self.logger = loop, params, where, window, logger
        self.conn: Any = None
        self.pub: Any = None  # the publish channel, once in confirm mode with the queues declared
        self.sub: Any = None  # the consume channel, once every consumer is on
        self.pub_open: Any = None  # the publish channel opening or open (None: none; a closed one is retired)
        self.sub_open: Any = None  # the consume channel opening or open
        self.declared: dict[str, None] = {}  # queues to declare after each reopen (ordered)
        self.consumers: dict[str, Consumer] = {}
        self.unconfirmed: dict[int, Outgoing] = {}  # publish sequence number -> message
        self.resend: deque[Outgoing] = deque()  # to publish once the publish channel is back
        self.next_seq = 1
        self.backoff = Backoff()
        self.pub_backoff, self.sub_backoff = Backoff(CHANNEL_RETRY), Backoff(CHANNEL_RETRY)
        self.error = ""
        self.status = f"connecting to {where}"
        self.closing = False
        self.counts = {"connects": 0, "resent": 0, "returned": 0, "nacked": 0, "cancelled": 0}
        self.received = 0  # bytes the broker sent on connections closed since (heard)

    # ---- what the mailboxes call -------------------------------------------

    @property
    def ready(self) -> bool:
        """Both channels up: publishing and every consumer on."""
        return self.pub is not None and self.sub is not None

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

    def consume(self, consumer: Consumer) -> None:
        """Consume now if the consume channel has started its consumers, and after every reopen."""
        self.consumers[consumer.queue] = consumer
        if self.sub_open is not None and self.sub_open.is_open:
            self._start_consumer(self.sub_open, consumer)

    def stop_consuming(self, consumer: Consumer) -> None:
        """Stop `consumer` (not a newer one of the same queue, opened before this one closed)."""
        if self.consumers.get(consumer.queue) is consumer:
            del self.consumers[consumer.queue]
        ch = self.sub_open  # not only `sub`: a consumer may be on while the channel's last method is answered
        if consumer.tag and ch is not None and ch.is_open:
            ch.basic_cancel(consumer.tag)

    def ack(self, channel: Any, tag: int) -> None:
        """Acknowledge a delivery of `channel`: nothing to do if that channel is gone (the broker requeued it).
        The channel may not be `sub` yet: deliveries start before the last consumer is on."""
        if channel is self.sub_open and channel.is_open:
            channel.basic_ack(tag)

    def requeue(self, channel: Any, tag: int) -> None:
        if channel is self.sub_open and channel.is_open:
            channel.basic_nack(tag, requeue=True)

    def close(self) -> None:
        self.closing = True
        if self.conn is not None and not (self.conn.is_closing or self.conn.is_closed):
            self.conn.close()

    # ---- the connection ----------------------------------------------------

    def _on_open(self, conn: Any) -> None:
        self.logger.info("connected to the broker at %s", self.where)
        self.status = f"connected to {self.where}, opening channels"
        conn.channel(on_open_callback=self._on_pub_channel)
        conn.channel(on_open_callback=self._on_sub_channel)

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
        self._retire_sub()
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

    # ---- the consume channel -----------------------------------------------

    def _on_sub_channel(self, ch: Any) -> None:
        self.sub_open = ch
        ch.add_on_close_callback(self._on_sub_closed)
        ch.add_on_cancel_callback(self._on_cancelled)
        consumers = list(self.consumers.values())
        for consumer in consumers:
            self._start_consumer(ch, consumer)
        ch.basic_qos(prefetch_count=1, callback=lambda _frame: self._sub_ready(ch))  # a fence: all are on

    def _start_consumer(self, ch: Any, consumer: Consumer) -> None:
        ch.queue_declare(consumer.queue, durable=True, arguments=QUEUE_ARGUMENTS)
        ch.basic_qos(prefetch_count=consumer.prefetch)  # per consumer: applies to the next basic.consume

        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            if self.consumers.get(consumer.queue) is not consumer:  # stopped: in flight when it was cancelled
                self.requeue(channel, method.delivery_tag)
                return
            priority = (props.headers or {}).get("tq-priority", 0)  # a stranger's message may have none
            consumer.on_message(channel, method.delivery_tag, priority if isinstance(priority, int) else 0, body)
        consumer.tag = ch.basic_consume(consumer.queue, on_message, auto_ack=False)

    def _sub_ready(self, ch: Any) -> None:
        if ch is not self.sub_open:
            return
        self.sub = ch
        self.sub_backoff.reset()
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.ready:
            self.backoff.reset()
            self.error = ""
            self.status = f"connected to {self.where}"

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): reopening the channel declares it again."""
        self.counts["cancelled"] += 1
        self.logger.warning("the broker cancelled consumer %s: consuming again", frame.method.consumer_tag)
        ch = self.sub_open
        if ch is not None:
            self._retire_sub()
            self._recycle(ch, self.sub_backoff, self._on_sub_channel, "consume", "a consumer cancelled by the broker")

    def _on_sub_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self.sub_open:
            return
        self._retire_sub()
        self._reopen(self.sub_backoff, self._on_sub_channel, "consume", reason)

    def _retire_sub(self) -> None:
        """The consume channel is gone or going: the broker requeues what it delivered and we did not ack."""
        self.sub = self.sub_open = None
        for consumer in self.consumers.values():
            consumer.tag = ""
            consumer.on_lost()

    def _recycle(self, ch: Any, backoff: Backoff, on_open: Callable[[Any], None], which: str, after: str) -> None:
        """Close a retired channel and open its successor."""
        if ch.is_open:
            ch.close(reply_text=f"retired after {after}")
        self._reopen(backoff, on_open, which, None)

    def _reopen(self, backoff: Backoff, on_open: Callable[[Any], None], which: str,
                reason: BaseException | None) -> None:
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
