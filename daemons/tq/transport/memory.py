"""The in-memory twin of the POSIX mailboxes, for tests that drive tq-host's parts in one process.

`MemoryMailboxes` owns its mailboxes by name, as the kernel owns POSIX queues:
closing a handle leaves the mailbox, and opening the name again gets the same
messages. Same ordering (priority, then FIFO), same bound, same descriptor
that polls readable while messages wait; no kernel limits (nothing is granted
below the configuration).
"""

from __future__ import annotations

import heapq
import itertools
import os

from .. import config
from .mailbox import Connectionless, Mailbox, MailboxError


class _Stored:
    """One mailbox's messages and its wake-up pipe (one byte per waiting message)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.heap: list[tuple[int, int, bytes]] = []
        self.seq = itertools.count()
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class MemoryMailbox:
    """One open handle of a memory mailbox: closing it leaves the mailbox (as mq_close leaves a POSIX queue)."""

    def __init__(self, name: str, stored: _Stored) -> None:
        self.name, self._stored = name, stored

    @property
    def max_messages(self) -> int:
        return self._stored.depth

    def send(self, data: bytes, priority: int) -> bool:
        s = self._stored
        if len(s.heap) >= s.depth:
            return False
        heapq.heappush(s.heap, (-priority, next(s.seq), data))
        os.write(s.w, b"x")
        return True

    def receive(self) -> bytes | None:
        s = self._stored
        if not s.heap:
            return None
        os.read(s.r, 1)
        return heapq.heappop(s.heap)[2]

    def fileno(self) -> int:
        return self._stored.r

    def close(self) -> None:
        pass


class MemoryMailboxes(Connectionless):
    """The mailboxes of one configuration, in this process: named as the POSIX ones, as deep as configured.
    `close()` removes them all (their descriptors)."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg  # for the mailboxes' names
        self.depth = cfg.mqueue.max_messages  # the host mailbox's
        self.message_size = cfg.mqueue.max_message_size
        self.notes: tuple[str, ...] = ()
        self._stored: dict[str, _Stored] = {}

    def open_host(self, drained: list[bytes] | None = None) -> Mailbox:
        return self._create(self.cfg.host_queue, self.depth, drained)

    def open_inbox(self, instance: str) -> Mailbox:
        return self._existing(self.cfg.inbox(instance))

    def create_inbox(self, instance: str, depth: int, drained: list[bytes] | None = None) -> Mailbox:
        return self._create(self.cfg.inbox(instance), depth, drained)

    def reach_host(self) -> Mailbox:
        return self._existing(self.cfg.host_queue)

    def host_replaced(self, held: Mailbox) -> bool:
        stored = self._stored.get(self.cfg.host_queue)
        return stored is not None and isinstance(held, MemoryMailbox) and held._stored is not stored

    def depth_bounds(self) -> str:
        return "in memory: none"

    def close(self) -> None:
        for stored in self._stored.values():
            stored.close()
        self._stored.clear()

    def _existing(self, name: str) -> MemoryMailbox:
        if name not in self._stored:
            raise MailboxError(f"mailbox {name} does not exist")
        return MemoryMailbox(name, self._stored[name])

    def _create(self, name: str, depth: int, drained: list[bytes] | None) -> MemoryMailbox:
        """The mailbox `name`, created `depth` deep; one of another depth is drained and recreated (as a POSIX
        queue of other dimensions is)."""
        old = self._stored.get(name)
        if old is not None and old.depth != depth:
            handle = MemoryMailbox(name, old)
            while (data := handle.receive()) is not None:
                if drained is not None:
                    drained.append(data)
            old.close()
            del self._stored[name]
        if name not in self._stored:
            self._stored[name] = _Stored(depth)
        return MemoryMailbox(name, self._stored[name])
