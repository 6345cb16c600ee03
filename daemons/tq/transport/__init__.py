"""Where the mailboxes live: the one interface tq-host and tq-worker use to reach each other.

"Queue" means a job queue; a message-level queue is a mailbox (the host's mailbox, each worker's inbox).
The interface is in mailbox.py; the back ends: posix.py (kernel POSIX message queues, with the kernel's
limits), amqp.py (a RabbitMQ broker: workers on other machines), routed.py (tq-host with both) and memory.py
(the in-memory twin for tests, mailboxes by name). A new transport is one more module implementing
`Mailboxes` and one more case in `for_config`.
"""

from __future__ import annotations

import logging
import selectors

from .. import config
from .mailbox import Connectionless, Mailbox, MailboxAccessDenied, MailboxError, Mailboxes, OutOfBudget
from .posix import PosixMailboxes

__all__ = ["Connectionless", "Mailbox", "MailboxAccessDenied", "MailboxError", "Mailboxes", "OutOfBudget",
           "for_config", "granted"]


def for_config(cfg: config.Config, sel: selectors.BaseSelector, logger: logging.Logger, name: str,
               host: bool = False) -> Mailboxes:
    """The mailboxes of `cfg` for the daemon `name` whose loop runs `sel`: tq-host's (`host`) on both transports
    when [amqp] names queues; a worker's through the broker with [transport] kind = "amqp"; else the POSIX
    queues. MailboxError if the broker's password cannot be read or its host resolved."""
    if not host and cfg.transport.kind == "amqp" and cfg.transport.url is not None:
        return _amqp(cfg, cfg.transport.url, sel, logger, name)
    if host and cfg.amqp.url is not None and cfg.amqp.queues:
        from .routed import RoutedMailboxes
        return RoutedMailboxes(PosixMailboxes(cfg), _amqp(cfg, cfg.amqp.url, sel, logger, name))
    return PosixMailboxes(cfg)


def granted(cfg: config.Config, host: bool = False) -> tuple[int, tuple[str, ...]]:
    """The largest message and the notes of limits granted below `cfg` (for a reload: connects nowhere)."""
    if not host and cfg.transport.kind == "amqp":
        return cfg.mqueue.max_message_size, ()  # a broker grants what is configured
    posix = PosixMailboxes(cfg)
    return posix.message_size, posix.notes


def _amqp(cfg: config.Config, url: config.BrokerUrl, sel: selectors.BaseSelector, logger: logging.Logger,
          name: str) -> Mailboxes:
    from .amqp import AmqpMailboxes  # (pika is imported only where a broker is configured)
    from .amqploop import AmqpLoop
    return AmqpMailboxes(cfg, url, AmqpLoop(sel), logger, connection_name=name)
