"""Queues that carry protocol messages: kernel POSIX message queues, and an in-memory twin for unit tests.

A POSIX queue outlives the process and its depth and message size are fixed at
creation, so `open_queue` checks an existing queue against the configuration
and, on a mismatch, drains it (handing the messages back) and recreates it.
"""

from __future__ import annotations

import grp
import heapq
import itertools
import os
import resource
from pathlib import Path
from typing import Protocol

import posix_ipc

QUEUE_MODE = 0o660
GROUP = "tq"
MQ_PROC = Path("/proc/sys/fs/mqueue")


class QueueError(Exception):
    """A queue cannot be opened or created; the message says why and what to do."""


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


def kernel_limits() -> dict[str, int]:
    """The kernel's POSIX queue limits from /proc/sys/fs/mqueue (empty where unreadable)."""
    limits = {}
    for name in ("msg_max", "msgsize_max", "queues_max"):
        try:
            limits[name] = int((MQ_PROC / name).read_text())
        except (OSError, ValueError):
            pass
    return limits


def _msgqueue_limit() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def check_limits(max_messages: int, max_message_size: int) -> None:
    """Refuse a configuration the kernel would refuse, with the sysctl that fixes it."""
    limits = kernel_limits()
    problems = []
    if max_messages > limits.get("msg_max", max_messages):
        problems.append(f"mqueue.max_messages = {max_messages} exceeds fs.mqueue.msg_max = {limits['msg_max']}"
                        f" (sysctl -w fs.mqueue.msg_max={max_messages})")
    if max_message_size > limits.get("msgsize_max", max_message_size):
        problems.append(f"mqueue.max_message_size = {max_message_size} exceeds fs.mqueue.msgsize_max = "
                        f"{limits['msgsize_max']} (sysctl -w fs.mqueue.msgsize_max={max_message_size})")
    if problems:
        raise QueueError("; ".join(problems) + "; the tq package raises these in /usr/lib/sysctl.d/60-tq.conf")


def restrict(target: str | int, mode: int) -> None:
    """Give a file (path or descriptor) `mode` and, where group tq exists, that group: root and group tq only.

    mq_open's and bind's modes are filtered by the umask, so the daemons set them explicitly.
    """
    try:
        os.chmod(target, mode)
        os.chown(target, -1, grp.getgrnam(GROUP).gr_gid)
    except (OSError, KeyError):
        pass  # no such file yet, no group tq, or not ours to change


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
        hint = ""
        if "maximum number of files" in str(e):  # EMFILE: mq_open's answer when RLIMIT_MSGQUEUE is used up
            hint = (f"; the per-user queue memory limit RLIMIT_MSGQUEUE ({_msgqueue_limit()}) is used up: "
                    "raise it (LimitMSGQUEUE= in the unit, ulimit -q) or remove stale queues")
        raise QueueError(f"cannot open queue {name} (depth {max_messages}, message size {max_message_size}): "
                         f"{e}{hint}; kernel limits {kernel_limits()}") from None
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
