"""Queues that carry protocol messages: kernel POSIX message queues, and an in-memory twin for unit tests.

A POSIX queue outlives the process and its depth and message size are fixed at
creation, so `open_queue` checks an existing queue against the configuration
and, on a mismatch, drains it (handing the messages back) and recreates it.
"""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Protocol

import posix_ipc

from . import limits
from .ownership import GROUP, restrict

QUEUE_MODE = 0o600  # the daemons' user alone: nobody else can forge a message (members use the socket)


class QueueError(Exception):
    """A queue cannot be opened or created; the message says why and what to do."""


class OutOfBudget(QueueError):
    """The owner's RLIMIT_MSGQUEUE has no room for a queue this large."""


class QueueAccessDenied(QueueError):
    """mq_open said EACCES: the caller is not the queues' owner (or in their group)."""


class Transport(Protocol):
    """What the daemons need from a queue."""

    name: str

    @property
    def max_messages(self) -> int:
        """The queue's depth, fixed when it was created."""
        ...

    def send(self, data: bytes, priority: int) -> bool:
        """Send without blocking; False when the queue is full."""
        ...

    def receive(self) -> bytes | None:
        """Receive without blocking; None when the queue is empty."""
        ...

    def fileno(self) -> int:
        """A descriptor that polls readable while messages wait."""
        ...

    def close(self) -> None: ...


class PosixQueue:
    """A non-blocking posix_ipc MessageQueue."""

    def __init__(self, mq: posix_ipc.MessageQueue, name: str) -> None:
        self.mq, self.name = mq, name
        mq.block = False
        os.set_inheritable(mq.mqd, False)

    def send(self, data: bytes, priority: int) -> bool:
        try:
            self.mq.send(data, priority=priority)
            return True
        except posix_ipc.BusyError:
            return False

    def receive(self) -> bytes | None:
        try:
            data, _priority = self.mq.receive()
            return bytes(data)
        except posix_ipc.BusyError:
            return None

    def fileno(self) -> int:
        return int(self.mq.mqd)

    @property
    def max_messages(self) -> int:
        return int(self.mq.max_messages)

    def close(self) -> None:
        try:
            self.mq.close()
        except posix_ipc.Error:
            pass


class MemoryQueue:
    """The in-memory twin of PosixQueue: same ordering (priority, then FIFO), same bound."""

    def __init__(self, name: str = "mem", max_messages: int = 10) -> None:
        self.name, self._depth = name, max_messages
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = itertools.count()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def send(self, data: bytes, priority: int) -> bool:
        if len(self._heap) >= self._depth:
            return False
        heapq.heappush(self._heap, (-priority, next(self._seq), data))
        os.write(self._w, b"x")
        return True

    @property
    def max_messages(self) -> int:
        return self._depth

    def receive(self) -> bytes | None:
        if not self._heap:
            return None
        os.read(self._r, 1)
        return heapq.heappop(self._heap)[2]

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def open_queue(name: str, max_messages: int, max_message_size: int, create: bool = True,
               drained: list[bytes] | None = None) -> PosixQueue:
    """Open (or create) queue `name` with exactly the configured depth and message size.

    An existing queue with other dimensions is drained into `drained` and recreated.
    Raises QueueAccessDenied or QueueError with a one-line reason.
    """
    try:
        mq = posix_ipc.MessageQueue(name, posix_ipc.O_CREAT if create else 0, mode=QUEUE_MODE,
                                    max_messages=max_messages, max_message_size=max_message_size)
    except posix_ipc.PermissionsError:
        raise QueueAccessDenied(f"permission denied on queue {name}: add yourself to group {GROUP}") from None
    except posix_ipc.ExistentialError:
        raise QueueError(f"queue {name} does not exist (is tq-host running?)") from None
    except (ValueError, OSError, posix_ipc.Error) as e:
        if "maximum number of files" in str(e):  # EMFILE: mq_open's answer when RLIMIT_MSGQUEUE is used up
            raise OutOfBudget(f"cannot open queue {name} (depth {max_messages}, message size {max_message_size}, "
                              f"{limits.queue_bytes(max_messages, max_message_size)} bytes): the per-user queue "
                              f"memory limit RLIMIT_MSGQUEUE ({limits.budget()}) is used up: raise it "
                              "(LimitMSGQUEUE= in the unit, ulimit -q) or remove stale queues") from None
        raise QueueError(f"cannot open queue {name} (depth {max_messages}, message size {max_message_size}): "
                         f"{e}; kernel limits {limits.kernel_limits()}") from None
    if create and (mq.max_messages != max_messages or mq.max_message_size != max_message_size):
        old = PosixQueue(mq, name)
        while (data := old.receive()) is not None:
            if drained is not None:
                drained.append(data)
        mq.unlink()
        old.close()
        return open_queue(name, max_messages, max_message_size, create, drained)
    if create:
        restrict(mq.mqd, QUEUE_MODE)
    return PosixQueue(mq, name)


def unlink_queue(name: str) -> None:
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


def open_within_budget(name: str, max_messages: int, max_message_size: int, least: int,
                       drained: list[bytes] | None = None) -> PosixQueue:
    """open_queue, halving the depth (down to `least`) while the owner's queue memory budget has no room."""
    depth = max_messages
    while True:
        try:
            return open_queue(name, depth, max_message_size, drained=drained)
        except OutOfBudget:
            if depth <= least:
                raise
            depth = max(least, depth // 2)
