"""Where the mailboxes live: the one interface tq-host and tq-worker use to reach each other.

"Queue" means a job queue; a message-level queue is a mailbox (the host's mailbox, each worker's inbox).
The interface is in mailbox.py; the back ends: posix.py (kernel POSIX message queues, with the kernel's
limits), amqp.py (a RabbitMQ broker: workers on other machines), routed.py (tq-host with both) and memory.py
(the in-memory twin for tests, mailboxes by name). A new transport is one more module implementing
`Mailboxes` and one more case in `for_config`. A daemon's loop selects with `selector(cfg)`: the plain one, or
(serviced.py) one that also runs a broker connection's timers.
"""

from __future__ import annotations

import logging
import selectors

from .. import config
from .mailbox import Connectionless, Mailbox, MailboxAccessDenied, MailboxError, Mailboxes, MailboxForeign, OutOfBudget
from .posix import PosixMailboxes
from .serviced import ServicedSelector

__all__ = ["Connectionless", "Mailbox", "MailboxAccessDenied", "MailboxError", "MailboxForeign", "Mailboxes",
           "OutOfBudget", "PosixMailboxes", "for_config", "granted", "selector"]


def selector(cfg: config.Config, host: bool = False) -> selectors.BaseSelector:
    """The selector of a daemon's loop (tq-host's: `host`): a ServicedSelector when `cfg` has it use a broker."""
    return ServicedSelector() if broker(cfg, host) is not None else selectors.DefaultSelector()


def for_config(cfg: config.Config, sel: selectors.BaseSelector, logger: logging.Logger, name: str,
               host: bool = False) -> Mailboxes:
    """The mailboxes of `cfg` for the daemon `name` whose loop runs `sel` (made by `selector(cfg, host)`):
    tq-host's (`host`) on both transports when [amqp] names queues; a worker's through the broker with
    [transport] kind = "amqp"; else the POSIX queues. A broker's password and TLS files are read, and its host
    looked up, at each connection attempt: one that fails is a wait, said in STATUS, never an error here."""
    url = broker(cfg, host)
    if url is None:
        return PosixMailboxes(cfg)
    if not isinstance(sel, ServicedSelector):
        raise TypeError("a broker's connection needs the loop's selector from transport.selector()")
    remote = _amqp(cfg, url, sel, logger, name)
    if not host:
        return remote
    from .routed import RoutedMailboxes
    return RoutedMailboxes(PosixMailboxes(cfg), remote)


def broker(cfg: config.Config, host: bool = False) -> config.BrokerUrl | None:
    """The broker a daemon of `cfg` connects to (tq-host's: `host`), or None."""
    if host:
        return cfg.amqp.url if cfg.amqp.queues else None
    return cfg.transport.url if cfg.transport.kind == "amqp" else None


def granted(cfg: config.Config, host: bool = False) -> tuple[int, tuple[str, ...]]:
    """The largest message and the notes of limits granted below `cfg` (for a reload: connects nowhere)."""
    if not host and broker(cfg) is not None:
        return cfg.mqueue.max_message_size, ()  # a broker grants what is configured
    posix = PosixMailboxes(cfg)
    return posix.message_size, posix.notes


def _amqp(cfg: config.Config, url: config.BrokerUrl, sel: ServicedSelector, logger: logging.Logger,
          name: str) -> Mailboxes:
    from .amqp import AmqpMailboxes  # (pika is imported only where a broker is configured)
    from .amqploop import AmqpLoop
    loop = AmqpLoop(sel)
    mailboxes = AmqpMailboxes(cfg, url, loop, logger, connection_name=name)
    sel.timed.append(loop)
    return mailboxes
