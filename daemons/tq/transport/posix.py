"""Mailboxes as kernel POSIX message queues, and the kernel's limits on them.

A POSIX queue outlives the process and its depth and message size are fixed at
creation, so `open_mailbox` checks an existing queue against the configuration
and, on a mismatch, drains it (handing the messages back) and recreates it.

A queue's depth and message size may not exceed `fs.mqueue.msg_max` and
`msgsize_max` (for a process without CAP_SYS_RESOURCE), and all the queues a
user owns share RLIMIT_MSGQUEUE bytes (819,200 by default). The package raises
the sysctls; where that cannot be done (a container whose /proc/sys is
read-only) the daemons start with what the kernel grants and say so once, and
a mailbox that does not fit the memory budget is made shallower.
"""

from __future__ import annotations

import os
import resource
import uuid
from dataclasses import dataclass
from pathlib import Path

import posix_ipc

from .. import config
from ..ownership import restrict
from . import mqueuefs
from .mailbox import Connectionless, Mailbox, MailboxError, OutOfBudget

MAILBOX_MODE = 0o600  # the daemons' user alone: nobody else can forge a message (members use the socket); a queue
# of that name that another user made is refused (mqueuefs.check_ours)
MQ_PROC = Path("/proc/sys/fs/mqueue")
# The kernel charges each queue depth * (message size + its bookkeeping per message) against RLIMIT_MSGQUEUE
# (ipc/mqueue.c: a struct msg_msg and a share of the priority tree); measured in docs/performance.md.
PER_MESSAGE_OVERHEAD = 96
SYSCTL_FILE = "/usr/lib/sysctl.d/60-tq.conf"


class PosixMailboxes(Connectionless):
    """The mailboxes of one configuration as POSIX queues named after `mqueue.prefix`: `PREFIX.host` and
    `PREFIX.w.INSTANCE`, with the depth and message size the kernel grants of [mqueue]. Logs nothing: the
    daemons log `notes`."""

    def __init__(self, cfg: config.Config) -> None:
        granted = grant(cfg.mqueue.max_messages, cfg.mqueue.max_message_size)
        self.cfg = cfg  # for the mailboxes' names
        self.depth = granted.max_messages  # the host mailbox's
        self.message_size = granted.max_message_size
        self.deepest = granted.msg_max
        self.notes = granted.notes

    def open_host(self, drained: list[bytes] | None = None) -> Mailbox:
        mailbox = open_within_budget(self.cfg.host_queue, self.depth, self.message_size, least=2, drained=drained)
        if mailbox.max_messages < self.depth:
            self.notes = (*self.notes, f"the host mailbox holds {mailbox.max_messages} messages, not "
                          f"mqueue.max_messages = {self.depth}: the queue memory budget RLIMIT_MSGQUEUE "
                          f"({budget()}) has no room for more")
        return mailbox

    def open_inbox(self, instance: str) -> Mailbox:
        return open_mailbox(self.cfg.inbox(instance), 1, self.message_size, create=False)

    def create_inbox(self, instance: str, depth: int, drained: list[bytes] | None = None) -> Mailbox:
        return open_within_budget(self.cfg.inbox(instance), min(depth, self.deepest), self.message_size, least=2,
                                  drained=drained)

    def reach_host(self) -> Mailbox:
        return open_mailbox(self.cfg.host_queue, self.depth, self.message_size, create=False)

    def host_replaced(self, held: Mailbox) -> bool:
        """Compares the queues' inodes (an mq_open, two fstat and an mq_close)."""
        try:
            fresh = posix_ipc.MessageQueue(self.cfg.host_queue)
        except posix_ipc.Error:
            return False
        try:
            now, was = os.fstat(fresh.mqd), os.fstat(held.fileno())
        finally:
            fresh.close()
        return (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino)

    def depth_bounds(self) -> str:
        return f"fs.mqueue.msg_max {self.deepest}, queue memory budget RLIMIT_MSGQUEUE {budget()}"


class PosixMailbox:
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


def open_mailbox(name: str, max_messages: int, max_message_size: int, create: bool = True,
                 drained: list[bytes] | None = None) -> PosixMailbox:
    """Open (or create) mailbox `name` with exactly the configured depth and message size.

    An existing queue with other dimensions is drained into `drained` and recreated. A queue of another user is
    refused (MailboxForeign), one of ours with a wider mode narrowed (mqueuefs.py).
    Raises MailboxForeign or MailboxError with a one-line reason.
    """
    try:
        mq = posix_ipc.MessageQueue(name, posix_ipc.O_CREAT if create else 0, mode=MAILBOX_MODE,
                                    max_messages=max_messages, max_message_size=max_message_size)
    except posix_ipc.PermissionsError:
        raise mqueuefs.denied(name) from None
    except posix_ipc.ExistentialError:
        raise MailboxError(f"mailbox {name} does not exist (is tq-host running?)") from None
    except (ValueError, OSError, posix_ipc.Error) as e:
        if "maximum number of files" in str(e):  # EMFILE: mq_open's answer when RLIMIT_MSGQUEUE is used up
            raise out_of_budget(name, max_messages, max_message_size) from None
        raise MailboxError(f"cannot open mailbox {name} (depth {max_messages}, message size {max_message_size}): "
                           f"{e}; kernel limits {kernel_limits()}") from None
    try:
        mqueuefs.check_ours(mq.mqd, name, MAILBOX_MODE)  # before anything is read from it or sent to it
    except MailboxError:
        mq.close()
        raise
    if create and (mq.max_messages != max_messages or mq.max_message_size != max_message_size):
        old = PosixMailbox(mq, name)
        while (data := old.receive()) is not None:
            if drained is not None:
                drained.append(data)
        mq.unlink()
        old.close()
        return open_mailbox(name, max_messages, max_message_size, create, drained)
    if create:
        restrict(mq.mqd, MAILBOX_MODE)
    return PosixMailbox(mq, name)


def out_of_budget(name: str, max_messages: int, max_message_size: int) -> OutOfBudget:
    """mq_open's EMFILE: this user's RLIMIT_MSGQUEUE has no room for the mailbox; what holds it, how to get more."""
    hint = raise_hint(*resource.getrlimit(resource.RLIMIT_MSGQUEUE), systemd=_systemd(),
                      held=mqueuefs.held_by_user(mailbox_bytes))
    return OutOfBudget(f"cannot open mailbox {name} (depth {max_messages}, message size {max_message_size}, "
                       f"{mailbox_bytes(max_messages, max_message_size)} bytes): the per-user queue memory limit "
                       f"RLIMIT_MSGQUEUE ({budget()}) is used up: {hint}")


def unlink_mailbox(name: str) -> bool:
    """Remove the mailbox `name`; False if there was none."""
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        return False
    return True


def open_within_budget(name: str, max_messages: int, max_message_size: int, least: int,
                       drained: list[bytes] | None = None) -> PosixMailbox:
    """open_mailbox, halving the depth (down to `least`) while the owner's queue memory budget has no room."""
    depth = max_messages
    while True:
        try:
            return open_mailbox(name, depth, max_message_size, drained=drained)
        except OutOfBudget:
            if depth <= least:
                raise
            depth = max(least, depth // 2)


# ---- the kernel's limits ----------------------------------------------------

def kernel_limits(depth_wanted: int = 1024, size_wanted: int = 65536) -> dict[str, int]:
    """msg_max, msgsize_max and queues_max from /proc/sys/fs/mqueue; where /proc/sys is hidden, msg_max and
    msgsize_max are found by trying small queues (created and removed at once), up to what is wanted."""
    limits = {}
    for name in ("msg_max", "msgsize_max", "queues_max"):
        try:
            limits[name] = int((MQ_PROC / name).read_text())
        except (OSError, ValueError):
            pass
    if "msg_max" not in limits and (found := _probe(True, depth_wanted)) is not None:
        limits["msg_max"] = found
    if "msgsize_max" not in limits and (found := _probe(False, size_wanted)) is not None:
        limits["msgsize_max"] = found
    return limits


def _fits(depth: int, size: int) -> bool | None:
    """Whether the kernel accepts a queue of these dimensions (None: it could not be told, e.g. no budget left)."""
    name = f"/tq-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600, max_messages=depth, max_message_size=size)
    except ValueError:
        return False
    except OSError as e:
        return False if e.errno == 22 else None  # EINVAL: over the limit; EMFILE, ENOSPC: the budget
    except posix_ipc.Error:
        return None
    q.unlink()
    q.close()
    return True


def _probe(depth: bool, ceiling: int) -> int | None:
    """The largest depth (or message size) up to `ceiling` that the kernel grants, by bisection; a queue that
    does not fit the memory budget counts as too large (it could not be had either)."""
    if _fits(1, 64) is not True:
        return None
    low, high = 1, ceiling
    while low < high:
        mid = (low + high + 1) // 2
        fits = _fits(mid, 64) if depth else _fits(1, mid)
        low, high = (mid, high) if fits else (low, mid - 1)
    return low


def mailbox_bytes(depth: int, size: int) -> int:
    """What a mailbox costs of its owner's RLIMIT_MSGQUEUE budget."""
    return depth * (size + PER_MESSAGE_OVERHEAD)


def raise_hint(soft: int, hard: int, systemd: bool, held: str) -> str:
    """How to get more of the RLIMIT_MSGQUEUE budget: raise the soft limit up to the hard one (under `systemd`,
    also the unit's LimitMSGQUEUE=); at the hard limit, only CAP_SYS_RESOURCE raises it (a container's service
    manager lacks it: the unit's LimitMSGQUEUE= stays unapplied). `held`: what holds the budget (mqueuefs)."""
    free = f"{held}; or lower the depth or size"
    if resource.RLIM_INFINITY in (soft, hard) or soft < hard:
        unit = "LimitMSGQUEUE= in the unit, or " if systemd else ""
        ceiling = "no hard limit" if hard == resource.RLIM_INFINITY else f"up to the hard limit {hard} bytes"
        return f"raise it ({unit}ulimit -q, {ceiling}), or free some: {free}"
    container = " (a container's service manager lacks it: the unit's LimitMSGQUEUE= is not applied)" if systemd else ""
    return (f"this is the hard limit too (ulimit -q cannot go higher), which only CAP_SYS_RESOURCE raises{container}: "
            f"{free}")


def _systemd() -> bool:
    """Whether this process runs as a systemd unit (systemd sets INVOCATION_ID for each)."""
    return "INVOCATION_ID" in os.environ


def budget() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


@dataclass(frozen=True)
class Granted:
    max_messages: int  # the depth to use for the host mailbox
    max_message_size: int
    msg_max: int  # the deepest mailbox the kernel grants (bounds a worker's inbox)
    notes: tuple[str, ...]  # one line per limit below the configuration: the limit, the value used, the remedy


def grant(max_messages: int, max_message_size: int) -> Granted:
    """What the configured depth and message size become on this kernel."""
    limits = kernel_limits(max(max_messages, 1024), max_message_size)
    msg_max = limits.get("msg_max", max_messages)
    size_max = limits.get("msgsize_max", max_message_size)
    notes = []
    if max_messages > msg_max:
        notes.append(f"mqueue.max_messages = {max_messages} exceeds fs.mqueue.msg_max = {msg_max}: using {msg_max} "
                     f"(raise it: sysctl -w fs.mqueue.msg_max={max_messages}, as {SYSCTL_FILE} does where "
                     "/proc/sys is writable)")
    if max_message_size > size_max:
        notes.append(f"mqueue.max_message_size = {max_message_size} exceeds fs.mqueue.msgsize_max = {size_max}: "
                     f"using {size_max}; larger jobs are refused at submit (raise it: sysctl -w "
                     f"fs.mqueue.msgsize_max={max_message_size}, as {SYSCTL_FILE} does where /proc/sys is writable)")
    return Granted(min(max_messages, msg_max), min(max_message_size, size_max), max(msg_max, 1), tuple(notes))
