"""Who may open tq's files, sockets and mailboxes: their mode, and group tq where it exists; and how an owner is
named in a message.

tq-host's store and control socket, and the POSIX mailboxes of host and workers, all go through here.
"""

from __future__ import annotations

import grp
import os
import pwd

GROUP = "tq"


def restrict(target: str | int, mode: int) -> None:
    """Give a file (path or descriptor) `mode` and, where group tq exists, that group: root and group tq only.

    mq_open's and bind's modes are filtered by the umask, so the daemons set them explicitly. Failures are
    ignored (no such file yet, no group tq, not a member of it): a mailbox is first checked to be this user's
    and no wider than asked (transport/mqueuefs.py), which fails loudly.
    """
    try:
        os.chmod(target, mode)
        os.chown(target, -1, grp.getgrnam(GROUP).gr_gid)
    except (OSError, KeyError):
        pass


def user_name(uid: int) -> str:
    """`user NAME (uid N)`, or `uid N` when the uid has no name here."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """`group NAME`, or `gid N` when the gid has no name here."""
    try:
        return f"group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"gid {gid}"
