"""The interface every transport implements: a mailbox, the mailboxes of one configuration, and their errors.

A mailbox carries protocol messages to one reader: the host's mailbox takes every worker's messages, a
worker's inbox takes the host's. Each back end (posix.py, memory.py) implements `Mailboxes`; the daemons
see only these names (through `tq.transport`). Kept apart from the package's __init__ so that the back
ends can import it without an import cycle.
"""

from __future__ import annotations

from typing import Protocol


class MailboxError(Exception):
    """A mailbox cannot be opened or created; the message says why and what to do."""


class OutOfBudget(MailboxError):
    """The owner's budget for mailboxes (POSIX: RLIMIT_MSGQUEUE) has no room for one this large."""


class MailboxAccessDenied(MailboxError):
    """The caller may not open the mailbox (POSIX: mq_open said EACCES; not the owner or in their group)."""


class MailboxForeign(MailboxAccessDenied):
    """The mailbox belongs to another user (POSIX: a queue of that name made by someone else, or by another tq on
    the same prefix): it is never read from or sent to. The daemons refuse to start on it (EXIT_FOREIGN)."""


class Mailbox(Protocol):
    """One open handle of a mailbox. Closing it leaves the mailbox and the messages in it."""

    name: str

    @property
    def max_messages(self) -> int:
        """The mailbox's depth, fixed when it was created."""
        ...

    def send(self, data: bytes, priority: int) -> bool:
        """Send without blocking; False when the mailbox is full. Higher priorities are received first."""
        ...

    def receive(self) -> bytes | None:
        """Receive without blocking; None when the mailbox is empty."""
        ...

    def fileno(self) -> int:
        """A descriptor that polls readable while messages wait. tq-worker also waits for the host mailbox's to
        poll writable (room again after a full one): POSIX queues do; the memory twin does not model it."""
        ...

    def close(self) -> None: ...


class Mailboxes(Protocol):
    """Where one configuration's mailboxes live, as granted for it (tq-host's and each worker's inbox)."""

    message_size: int  # the largest message, as granted
    notes: tuple[str, ...]  # one line per limit granted below the configuration (`tqctl status` shows them)

    def open_host(self, drained: list[bytes] | None = None) -> Mailbox:
        """tq-host's own mailbox, created if need be. One of other dimensions is drained into `drained` and
        recreated; a shallower one than configured adds a note."""
        ...

    def open_inbox(self, instance: str) -> Mailbox:
        """tq-host's handle of a worker's inbox, which that worker created; MailboxError if there is none."""
        ...

    def create_inbox(self, instance: str, depth: int, drained: list[bytes] | None = None) -> Mailbox:
        """A worker's own inbox, `depth` deep or as near as is granted; one of other dimensions is drained into
        `drained` and recreated."""
        ...

    def reach_host(self) -> Mailbox:
        """A worker's handle of tq-host's mailbox; MailboxError until tq-host has created it."""
        ...

    def host_replaced(self, held: Mailbox) -> bool:
        """Whether the host mailbox now at its name is another one than `held`, a worker's handle: tq-host's start
        re-created it with other dimensions, and `held` is deleted, read by nobody (False while none has the
        name). A worker asks only while its sends have been blocked for a while."""
        ...

    def depth_bounds(self) -> str:
        """What bounds a mailbox's depth here, for a warning that one is shallower than asked."""
        ...

    @property
    def waiting_for(self) -> str:
        """What the mailboxes wait for before they carry messages, in one line ("": nothing; a broker: its
        connection). A worker reports READY only once this is empty, and says it in STATUS meanwhile."""
        ...

    def unsettled(self) -> int:
        """Messages sent and not yet confirmed by a broker (a stopping daemon waits for them)."""
        ...

    def heard(self) -> int:
        """A count that changes each time the transport's connection hears from the other end (a broker's: bytes
        received, any frame); 0 for ever without a connection of its own."""
        ...

    def secrets_changed(self) -> bool:
        """(A reload) whether the connection's password file now holds another password than the one in use: the
        next connection attempt uses it (each attempt reads it). False without a connection of its own."""
        ...

    def losses(self) -> int:
        """How many times a queue this process consumes was deleted under it (by an operator, or a broker that
        lost it): what waited in it is gone, so the daemon has the Sync fence find what that was."""
        ...


class Connectionless:
    """The answers of a transport with no connection of its own (POSIX queues, the memory twin)."""

    @property
    def waiting_for(self) -> str:
        return ""

    def heard(self) -> int:
        return 0

    def secrets_changed(self) -> bool:
        return False

    def unsettled(self) -> int:
        return 0  # a message is in the kernel's queue once sent

    def losses(self) -> int:
        return 0  # a POSIX queue is not deleted under its reader (a restart is fenced anyway)
