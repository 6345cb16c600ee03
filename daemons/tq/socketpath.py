"""What is at `host.socket` before tq-host binds it: nothing, a socket (a stale one is replaced), or something
else, which tq-host refuses to touch (a typo in host.socket must not delete a file). tq-host's start and
`tqctl config check` ask the same question here."""

from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def socket_there(path: str) -> bool:
    """Whether a socket file is at `path` (False: nothing is). ValueError, saying what is there, for anything
    else (the symbolic link itself is looked at, not what it points to)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ValueError(f"cannot look at {path}: {e.strerror or e}") from None
    if stat.S_ISSOCK(mode):
        return True
    kind = next((kind for test, kind in _KINDS if test(mode)), "a file of another kind")
    raise ValueError(f"{path} exists and is not a socket but {kind}; tq-host leaves it as it is: set host.socket "
                     f"to another path, or move that away")
