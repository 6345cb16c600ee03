"""Warnings for a secret that other users of the machine can read: a broker password written in `amqp.url` or
`transport.url` (USER:PASSWORD@) in a configuration file readable by others (mode o+r, as the package's files are).
The password itself is never repeated."""

from __future__ import annotations

import os
import stat
from urllib.parse import urlsplit

from .configfiles import ConfigError
from .configreader import Reader


def readable_passwords(readers: list[Reader]) -> list[ConfigError]:
    """For each of these tables ([amqp], [transport]) whose `url` holds a password in a file others may read: one
    warning naming the file and key, and the way out (password_file)."""
    out = []
    for r in readers:
        url = r.table.get("url")
        if not isinstance(url, str) or not _has_password(url):
            continue
        if _others_read(r.error("url", "").file):  # (the file the key came from)
            out.append(r.error("url", "holds a password, and other users may read this file (mode o+r): put the "
                                      "password in password_file (install -m 0640 -g tq) and drop it from the url, "
                                      "or chmod o-r this file"))
    return out


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _others_read(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False
