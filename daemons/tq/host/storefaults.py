"""What a failure of the store means, in one line that says what to do: a damaged file, a full disk, a read-only
or forbidden one. tq-host's start refusals and its refusals of writes are phrased here, from SQLite's error code
(and, for an I/O error, whether the store's file system has any room left: SQLite says "disk I/O error" when a
full disk stops it growing its WAL or shared-memory file)."""

from __future__ import annotations

import errno
import os
import sqlite3

_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_DENIED = {sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_AUTH}


def describe(path: str, error: sqlite3.Error | OSError) -> str:
    """`store PATH: what happened: the error; what to do`, one line."""
    if isinstance(error, OSError):
        code, number = None, error.errno
        said = error.strerror or str(error)
    else:
        code, number = (error.sqlite_errorcode or 0) & 0xFF, None
        said = str(error)
    if code in _DAMAGED:
        return (f"store {path} is damaged ({said}): with tq-host stopped, `sqlite3 {path} 'PRAGMA "
                f"integrity_check'` says where; restore the file from a backup, or save what it holds with "
                f"`sqlite3 {path} .recover | sqlite3 NEW` and put NEW in its place")
    if code == sqlite3.SQLITE_FULL or number == errno.ENOSPC or (code == sqlite3.SQLITE_IOERR and _full(path)):
        return (f"store {path}: disk full (No space left on device): {said}; free space on its file system "
                f"(df {os.path.dirname(path)})")
    if code == sqlite3.SQLITE_READONLY or number == errno.EROFS:
        return f"store {path}: read-only ({said}): host.state_dir must be writable by tq-host's user"
    if code in _DENIED or number in (errno.EACCES, errno.EPERM):
        return f"store {path}: cannot open it ({said}): host.state_dir and the store must be tq-host's user's"
    return f"store {path}: {said}"


def _full(path: str) -> bool:
    """Whether the file system of the store has no block left for tq-host (a reserve for root aside)."""
    try:
        return os.statvfs(os.path.dirname(path) or ".").f_bavail == 0
    except OSError:
        return False
