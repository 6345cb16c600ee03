"""Whose a POSIX queue is: the check that a mailbox tq opened is this user's alone, and what /dev/mqueue (the
queues' file system, where it is mounted) says about a queue tq cannot open and about the queues that hold this
user's queue memory budget (RLIMIT_MSGQUEUE).

POSIX queues share one namespace for all users (/dev/mqueue is mode 1777, as /tmp), and mq_open with O_CREAT
opens a queue someone else made under the same name. A mailbox that another user owns is refused, never read
from or sent to: its owner could read the jobs sent to it and send forged jobs or results.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import posix_ipc

from ..ownership import user_name
from .mailbox import MailboxError, MailboxForeign

MQUEUE_DIR = "/dev/mqueue"


def mounted() -> bool:
    return os.path.ismount(MQUEUE_DIR)


def check_ours(fd: int, name: str, mode: int) -> None:
    """Refuse the open mailbox `name` (descriptor `fd`) unless this process's user owns it (MailboxForeign);
    narrow the mode of one of ours that grants more than `mode` (MailboxError if that fails)."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise MailboxError(f"cannot check who owns mailbox {name}: {e.strerror}") from None
    if st.st_uid != os.geteuid():
        raise MailboxForeign(foreign(name, st.st_uid))
    if stat.S_IMODE(st.st_mode) & ~mode:
        try:
            os.fchmod(fd, mode)
        except OSError as e:
            raise MailboxError(f"mailbox {name} has mode {stat.S_IMODE(st.st_mode):04o}, wider than "
                               f"{mode:04o}, and cannot be narrowed: {e.strerror}") from None


def owner(name: str) -> int | None:
    """The uid that owns queue `name`, as /dev/mqueue shows it; None when it is not mounted or has no such queue."""
    try:
        return os.stat(MQUEUE_DIR + name).st_uid if mounted() else None
    except OSError:
        return None


def denied(name: str) -> MailboxError:
    """What mq_open's EACCES on `name` means: tq's mailboxes are for their owner alone (mode 0600), so another
    user's (named when /dev/mqueue shows it); group tq has nothing to do with it."""
    uid = owner(name)
    if uid == os.geteuid():
        return MailboxError(f"permission denied on mailbox {name}, which is this user's: its mode lets nobody "
                            f"read it; remove it ({_remove(name)})")
    return MailboxForeign(foreign(name, uid))


def foreign(name: str, uid: int | None) -> str:
    """The one line refusing mailbox `name` of another user (`uid`; None: not known)."""
    whose = "another user" if uid is None else user_name(uid)
    return (f"mailbox {name} belongs to {whose}, not to this process's {user_name(os.geteuid())}: another user "
            f"made it, or another tq uses this [mqueue] prefix; remove it (as root: {_remove(name)}) or set "
            f"[mqueue] prefix")


def _remove(name: str) -> str:
    rm = f"rm {MQUEUE_DIR}{name}"
    return rm if mounted() else f"{rm}, after mount -t mqueue none {MQUEUE_DIR}"


def held_by_user(cost: Callable[[int, int], int], most: int = 5) -> str:
    """What holds this user's RLIMIT_MSGQUEUE: its queues in /dev/mqueue, largest first (`most` of them, then how
    many more), each with what it costs (`cost(depth, message size)`), and how to remove one; where /dev/mqueue
    is not mounted, how to look."""
    if not mounted():
        return f"remove stale queues (as root: mount -t mqueue none {MQUEUE_DIR}; ls -l {MQUEUE_DIR})"
    held = sorted(_own_queues(cost), reverse=True)
    if not held:
        return (f"this user has no queue in {MQUEUE_DIR} (a container's, in another IPC namespace, counts too)")
    shown = ", ".join(f"{name} {size} bytes" for size, name in held[:most])
    more = f" and {len(held) - most} more" if len(held) > most else ""
    return f"this user's queues hold it: {shown}{more} (rm {MQUEUE_DIR}/NAME removes one no longer used)"


def _own_queues(cost: Callable[[int, int], int]) -> list[tuple[int, str]]:
    """This user's queues in /dev/mqueue and what each costs (opened to read its dimensions, nothing else)."""
    found = []
    try:
        entries = list(os.scandir(MQUEUE_DIR))
    except OSError:
        return []
    for entry in entries:
        name = f"/{entry.name}"
        try:
            if entry.stat().st_uid != os.geteuid():
                continue
            q = posix_ipc.MessageQueue(name)
        except (OSError, posix_ipc.Error):
            continue
        try:
            found.append((cost(q.max_messages, q.max_message_size), name))
        finally:
            q.close()
    return found
