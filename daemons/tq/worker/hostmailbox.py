"""The host mailbox as a worker holds it: what waits in the outbox is sent there, and it is opened anew when
tq-host may have made a new one.

tq-host's start re-creates its mailbox when the dimensions changed (transport/posix.py); a worker holds the old
one until the new tq-host's Sync has it reach the host again (`reach`). If nothing read the old one meanwhile (a
start that failed after making the new one), heartbeats fill it, sends are blocked for good, and the worker, which
reads its inbox only when it has nothing to send, would never see that Sync: so while sends stay blocked, its
heartbeats ask whether the mailbox at the name is still the one held (`check_replaced`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import transport
from ..transport import Mailbox
from .outbox import Outbox


class HostMailbox:
    def __init__(self, mailboxes: transport.Mailboxes, outbox: Outbox, logger: logging.Logger,
                 unwatch: Callable[[], None]) -> None:
        """`unwatch`: called before the held mailbox is closed, to take its descriptor out of the worker's
        selector (the number gets reused)."""
        self.mailboxes, self.outbox, self.logger, self.unwatch = mailboxes, outbox, logger, unwatch
        self.held: Mailbox | None = None  # None until the worker's start reaches tq-host (and if it does not)

    def flush(self) -> None:
        """Send what waits in the outbox, in order, until the host mailbox is full."""
        assert self.held is not None
        self.outbox.flush(self.held)

    def reach(self) -> None:
        """Reopen the host mailbox (tq-host's start may have made a new one); keep the open one if that fails."""
        try:
            reopened = self.mailboxes.reach_host()
        except transport.MailboxError as e:
            self.logger.warning("keeping the open host mailbox: %s", e)
            return
        assert self.held is not None
        self.unwatch()  # forget the old descriptor
        self.held.close()
        self.held = reopened

    def check_replaced(self) -> None:
        """Sends blocked for a while: if the host mailbox held was deleted and replaced, send to the new one (what
        waits in the outbox goes there, in order). Asked at heartbeats while sends stay blocked, never per job."""
        assert self.held is not None
        if self.mailboxes.host_replaced(self.held):
            self.logger.warning("host mailbox %s was made anew (by a tq-host start with other mqueue dimensions); "
                                "nobody reads the one this worker held: sending to the new one", self.held.name)
            self.reach()
            self.flush()
