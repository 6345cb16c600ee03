"""tq-host's mailboxes when some job queues go through a broker ([amqp] queues): the workers of this machine on
the POSIX queues, remote workers through AMQP, told apart by name. A remote worker's instance carries its
machine ("1@render-3", machines.py); a local one's never has an "@".

tq-host then has two mailboxes of its own. `BothMailbox` takes from both, in turn, and its descriptor is an epoll
instance holding both of theirs: it polls readable while either does, so the host's loop registers one
descriptor, as with one transport.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

from .machines import is_remote
from .mailbox import Mailbox, Mailboxes


class BothMailbox:
    """tq-host's own mailbox on both transports, as one."""

    def __init__(self, local: Mailbox, remote: Mailbox) -> None:
        self.local, self.remote = local, remote
        self.name = f"{local.name} and {remote.name}"
        self._epoll = select.epoll()
        self._epoll.register(local.fileno(), select.EPOLLIN)
        self._epoll.register(remote.fileno(), select.EPOLLIN)
        self._turn = False  # which one receive() asks first: they take turns, so neither starves the other

    @property
    def max_messages(self) -> int:
        return self.local.max_messages

    def send(self, data: bytes, priority: int) -> bool:
        return self.local.send(data, priority)  # (tq-host does not write to its own mailbox)

    def receive(self) -> bytes | None:
        self._turn = not self._turn
        first, second = (self.local, self.remote) if self._turn else (self.remote, self.local)
        data = first.receive()
        return data if data is not None else second.receive()

    def fileno(self) -> int:
        return self._epoll.fileno()

    def close(self) -> None:
        self.local.close()
        self.remote.close()
        self._epoll.close()


class RoutedMailboxes:
    """tq-host's mailboxes: `local` for this machine's workers, `remote` (the broker) for the others."""

    def __init__(self, local: Mailboxes, remote: Mailboxes) -> None:
        self.local, self.remote = local, remote
        self.message_size = local.message_size
        self.notes = local.notes

    def open_host(self, drained: list[bytes] | None = None) -> Mailbox:
        local = self.local.open_host(drained)
        self.notes = self.local.notes
        return BothMailbox(local, self.remote.open_host())

    def open_inbox(self, instance: str) -> Mailbox:
        return (self.remote if is_remote(instance) else self.local).open_inbox(instance)

    def create_inbox(self, instance: str, depth: int, drained: list[bytes] | None = None) -> Mailbox:
        return self.local.create_inbox(instance, depth, drained)

    def reach_host(self) -> Mailbox:
        return self.local.reach_host()

    def host_replaced(self, held: Mailbox) -> bool:
        return self.local.host_replaced(held)

    def depth_bounds(self) -> str:
        return self.local.depth_bounds()

    @property
    def waiting_for(self) -> str:
        return self.remote.waiting_for

    def heard(self) -> int:
        return self.remote.heard()

    def secrets_changed(self) -> bool:
        return self.remote.secrets_changed()

    def unsettled(self) -> int:
        return self.remote.unsettled()

    def losses(self) -> int:
        return self.remote.losses()


if TYPE_CHECKING:  # mypy checks that these implement the interface
    _mailboxes: type[Mailboxes] = RoutedMailboxes
    _mailbox: type[Mailbox] = BothMailbox
