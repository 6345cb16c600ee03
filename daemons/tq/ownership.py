"""Who may open tq's files, sockets and mailboxes: their mode, and group tq where it exists.

tq-host's store and control socket, and the POSIX mailboxes of host and workers, all go through here.
"""

from __future__ import annotations

import grp
import os

GROUP = "tq"


def restrict(target: str | int, mode: int) -> None:
    """Give a file (path or descriptor) `mode` and, where group tq exists, that group: root and group tq only.

    mq_open's and bind's modes are filtered by the umask, so the daemons set them explicitly.
    """
    try:
        os.chmod(target, mode)
        os.chown(target, -1, grp.getgrnam(GROUP).gr_gid)
    except (OSError, KeyError):
        pass  # no such file yet, no group tq, or not ours to change
