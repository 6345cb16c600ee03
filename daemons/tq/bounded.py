"""Input read with a limit: stdin, a batch file's lines and the configuration's files are read up to their limit
and one byte more, so that endless or huge input (/dev/urandom on stdin, --config /dev/zero) is refused in
constant memory instead of filling it; a configuration file must be a regular file (a FIFO would block)."""

from __future__ import annotations

import os
import stat
from typing import IO

CONFIG_MAX = 1024 * 1024  # a configuration file's bytes: tens of thousands of tasks fit


class TooLarge(Exception):
    """The input goes on past its limit."""


class NotRegular(Exception):
    """A file that must be a regular file is a FIFO, a device, a directory or a socket."""


def read(source: IO[bytes], limit: int) -> bytes:
    """All of `source`, at most `limit` bytes; TooLarge if there is more."""
    data = source.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"more than {size(limit)}")
    return data


def read_regular(path: str, limit: int = CONFIG_MAX) -> bytes:
    """A regular file's bytes, at most `limit`; OSError (FileNotFoundError for a missing one), NotRegular or
    TooLarge. Opened without blocking: a FIFO's open returns at once, and is then refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(f"not a regular file ({file_kind(mode)})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return read(f, limit)


def size(n: int) -> str:
    """A limit as people read it: 16 MiB, 1 MiB, 64 KiB, or bytes."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit} ({n} bytes)"
    return f"{n} bytes"


def file_kind(mode: int) -> str:
    """What a file that is no regular file is, for a message."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")
