"""What a worker sends to tq-host, in order.

One FIFO for every message, so that a result is never overtaken by the
Synced that fences it (the fence relies on it); results are packed into one
Results message while jobs flow. What the host mailbox cannot take now waits
here: a full or absent host mailbox (a host restart) does not disturb a worker.
"""

from __future__ import annotations

import collections

from .. import protocol
from ..transport import Mailbox


class Outbox:
    def __init__(self, instance: str, limit: int) -> None:
        self.instance = instance
        self.limit = limit  # the mailboxes' message size
        self.pending: collections.deque[bytes] = collections.deque()  # encoded, for the host mailbox, in order
        self.results: list[list[object]] = []  # results not yet packed
        self.results_size = 0
        self.stuck_since = 0.0  # monotonic time of the first heartbeat that found messages waiting (0: the last not)

    def __bool__(self) -> bool:
        """True while messages wait for room in the host mailbox."""
        return bool(self.pending)

    def stuck(self, now: float, patience: float) -> bool:
        """Asked at each heartbeat: True when messages wait now and did at every heartbeat for `patience` seconds
        (the host mailbox may be a deleted one that nobody reads: HostMailbox.check_replaced)."""
        if not self.pending:
            self.stuck_since = 0.0
            return False
        if not self.stuck_since:
            self.stuck_since = now
        return now - self.stuck_since >= patience

    def message(self, msg: protocol.Message) -> None:
        self.pack_results()  # results first: nothing may overtake them
        self.pending.append(protocol.encode(msg))

    def result(self, result: protocol.Result) -> None:
        """Collect a result; they go as one Results message at the end of the step, or when one is full."""
        item = protocol.fields_of(result)[1:]  # without the instance, which the batch carries once
        size = len(protocol.pack_item(item))
        if self.results and self.results_size + size + 64 > self.limit:
            self.pack_results()
        self.results.append(item)
        self.results_size += size + 1

    def pack_results(self) -> None:
        if self.results:
            self.pending.append(protocol.encode(protocol.Results(self.instance, self.results)))
            self.results, self.results_size = [], 0

    def flush(self, mailbox: Mailbox) -> None:
        """Send what waits, in order, until the mailbox is full."""
        while self.pending:
            if not mailbox.send(self.pending[0], 0):
                return
            self.pending.popleft()
