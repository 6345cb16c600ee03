"""Whose a POSIX queue is: the check that a mailbox tq opened is this user's alone, and what /dev/mqueue (the
queues' file system, where it is mounted) says about a queue tq cannot open.

POSIX queues share one namespace for all users (/dev/mqueue is mode 1777, as /tmp), and mq_open with O_CREAT
opens a queue someone else made under the same name. A mailbox that another user owns is refused, never read
from or sent to: its owner could read the jobs sent to it and send forged jobs or results.
"""

from __future__ import annotations

import os
import stat

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
