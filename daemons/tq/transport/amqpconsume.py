"""The consume channel of an AMQP session (amqpsession.py) and the queues consumed on it.

Consuming is a state re-established after every reconnect and every channel loss: each consumer is declared,
given its prefetch and started again on the channel the session opens. Deliveries go to their consumer (the
mailbox) with tq's own priority, and are acknowledged or requeued on the channel they came on; when that channel
is gone, the broker has requeued them. A basic.cancel from the broker (its queue deleted) retires the channel,
as its close does: each consumer is told, and the session reopens a channel after its backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .amqpstate import CHANNEL_RETRY, QUEUE_ARGUMENTS, Backoff

OnOpen = Callable[[Any], None]  # a channel opened: pika's on_open_callback
Reopen = Callable[[Backoff, OnOpen, str, "BaseException | None"], None]  # Session._reopen
Recycle = Callable[[Any, Backoff, OnOpen, str, str], None]  # Session._recycle


@dataclass(eq=False)
class Consumer:
    """One queue consumed on the consume channel."""

    queue: str
    prefetch: int
    on_message: Callable[[Any, int, int, bytes], None]  # (channel, delivery tag, priority, body)
    on_lost: Callable[[], None]  # the channel went: its unacknowledged deliveries return to the queue
    tag: str = field(default="")


class Consuming:
    """The consume channel: `sub` once every consumer is on, `sub_open` while it opens or is open (None: none; a
    closed one is retired). The session opens it (`on_channel`), retires it with the connection (`retire`), and
    reopens it (`reopen`, `recycle`); `on_ready` is told once every consumer is on."""

    def __init__(self, counts: dict[str, int], on_ready: Callable[[], None], reopen: Reopen, recycle: Recycle,
                 logger: logging.Logger) -> None:
        """`counts`: the session's counters (this one counts "cancelled")."""
        self.counts, self.on_ready, self.reopen, self.recycle, self.logger = counts, on_ready, reopen, recycle, logger
        self.sub: Any = None  # the consume channel, once every consumer is on
        self.sub_open: Any = None  # the consume channel opening or open
        self.consumers: dict[str, Consumer] = {}
        self.sub_backoff = Backoff(CHANNEL_RETRY)

    # ---- what the mailboxes call -------------------------------------------

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

    # ---- the channel -------------------------------------------------------

    def on_channel(self, ch: Any) -> None:
        self.sub_open = ch
        ch.add_on_close_callback(self._on_closed)
        ch.add_on_cancel_callback(self._on_cancelled)
        consumers = list(self.consumers.values())
        for consumer in consumers:
            self._start_consumer(ch, consumer)
        ch.basic_qos(prefetch_count=1, callback=lambda _frame: self._ready(ch))  # a fence: all are on

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

    def _ready(self, ch: Any) -> None:
        if ch is not self.sub_open:
            return
        self.sub = ch
        self.sub_backoff.reset()
        self.on_ready()

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): reopening the channel declares it again."""
        self.counts["cancelled"] += 1
        self.logger.warning("the broker cancelled consumer %s: consuming again", frame.method.consumer_tag)
        ch = self.sub_open
        if ch is not None:
            self.retire()
            self.recycle(ch, self.sub_backoff, self.on_channel, "consume", "a consumer cancelled by the broker")

    def _on_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self.sub_open:
            return
        self.retire()
        self.reopen(self.sub_backoff, self.on_channel, "consume", reason)

    def retire(self) -> None:
        """The consume channel is gone or going: the broker requeues what it delivered and we did not ack."""
        self.sub = self.sub_open = None
        for consumer in self.consumers.values():
            consumer.tag = ""
            consumer.on_lost()
