"""Where the mailboxes live: the one interface tq-host and tq-worker use to reach each other.

"Queue" means a job queue; a message-level queue is a mailbox (the host's mailbox, each worker's inbox).
The interface is in mailbox.py; the back ends: posix.py (kernel POSIX message queues, with the kernel's
limits) and memory.py (the in-memory twin for tests, mailboxes by name). A new transport is one more module
implementing `Mailboxes` and one more case in `for_config`.
"""

from __future__ import annotations

from .. import config
from .mailbox import Mailbox, MailboxAccessDenied, MailboxError, Mailboxes, OutOfBudget
from .posix import PosixMailboxes

__all__ = ["Mailbox", "MailboxAccessDenied", "MailboxError", "Mailboxes", "OutOfBudget", "for_config"]


def for_config(cfg: config.Config) -> Mailboxes:
    """The mailboxes of `cfg`, granted against what their back end allows (today always POSIX queues)."""
    return PosixMailboxes(cfg)
