"""The store's file under tq-host's feet: removed or replaced while tq-host runs (an `rm`, a restore over it).

tq-host keeps writing to the file it opened, so what it acknowledges after the file went would live only in a
deleted inode, and the next start would make an empty store. Once a second (between steps, with nothing staged)
the watch compares what is at the store's paths (the file, its -wal and -shm) with what tq-host opened (st_dev,
st_ino); when they differ it writes the live store back: SQLite's online backup into a new file beside it,
fsync'd, then renamed into place, and the store reopened on it. Whatever was put at the path is kept aside as
`tq.sqlite3.replaced-TIME` (with its -wal). One critical line says what happened.
Nothing per job: three stat calls a second.

When the write-back fails (no room for the copy, the directory gone), the requests that would change the store are
refused (`unavailable`, exit 3) until one succeeds (it is tried again each second): what tq-host would acknowledge
could not survive it. STATUS= and a critical line (once a minute) say so, and README's Troubleshooting says how to
save the store from /proc/PID/fd.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any

from ..control import RequestError
from .requests import Op
from .store import Store
from .storefile import FILE_SUFFIXES, held_files

CHECK_INTERVAL = 1.0  # seconds between looks at the store's path
TELL_AGAIN = 60.0  # seconds between critical lines while the write-back keeps failing
# The requests that change the store and are acknowledged: refused while the store cannot be written back.
WRITING_OPS = ("submit", "cancel", "retry", "pause", "resume", "forget_worker", "token_create", "token_revoke")


class StoreWatch:
    def __init__(self, store: Store, ops: dict[str, Op], logger: logging.Logger) -> None:
        """`ops`: the control socket's operations by name (Requests.ops); the writing ones are swapped for a
        refusal while the store cannot be written back (no cost per request otherwise)."""
        self.store, self.ops, self.logger = store, ops, logger
        self.held: dict[str, Op] = {}  # the writing operations taken out of `ops`, while they are refused
        self.next_check = 0.0  # monotonic time of the next look
        self.failure = ""  # why the last write-back failed ("": none is pending); STATUS= says it
        self.told = -TELL_AGAIN  # monotonic time the failure was last logged

    def check(self, now: float) -> None:
        """Look at the store's path once a second (`now`, monotonic); write the store back if it is not there.
        The caller has committed: nothing is staged."""
        if now < self.next_check:
            return
        self.next_check = now + CHECK_INTERVAL
        if held_files(self.store.path) != self.store.files:
            self.write_back()

    def write_back(self) -> None:
        """Copy the live store to a new file, put it at the store's path, and reopen the store there."""
        path = self.store.path
        copy = f"{path}.rescue-{os.getpid()}"
        try:
            self._copy(copy)
            aside = self._clear(path)
            os.rename(copy, path)
            _sync_dir(path)
        except (OSError, sqlite3.Error) as e:
            _remove(copy)
            self.failure = (f"store {path} was removed or replaced while tq-host ran, and writing it back failed: "
                            f"{e}; changes are refused until it succeeds; do not stop tq-host: it holds the only "
                            f"copy (README, Troubleshooting)")
            if time.monotonic() - self.told >= TELL_AGAIN:
                self.logger.critical("%s", self.failure)
                self.told = time.monotonic()
            self._refuse_writes()
            return
        self.failure = ""
        self.ops.update(self.held)
        self.held.clear()
        self.store.reopen()  # (the old connection's close checkpoints into the file it holds, gone from the path)
        kept = f"; what was there is kept as {aside}" if aside else ""
        self.logger.critical("store %s was removed or replaced while tq-host ran: wrote the store tq-host holds "
                             "(jobs up to id %d) back to it%s", path, self.store.next_id - 1, kept)

    def _refuse_writes(self) -> None:
        if self.held:
            return
        self.held = {op: self.ops[op] for op in WRITING_OPS if op in self.ops}

        def refuse(conn: Any, rid: Any, req: dict[str, Any]) -> dict[str, Any] | None:
            raise RequestError("unavailable", self.failure)

        self.ops.update(dict.fromkeys(self.held, refuse))

    def _copy(self, copy: str) -> None:
        """The live store into `copy`, one consistent snapshot (SQLite's online backup), fsync'd."""
        _remove(copy)
        target = sqlite3.connect(copy)
        try:
            self.store.db.backup(target)
        finally:
            target.close()
        fd = os.open(copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _clear(self, path: str) -> str:
        """Make room at the store's path: our own files that are still there go (the copy has what they hold);
        another file put there is renamed aside with its -wal and -shm. The name it was given ("" if none)."""
        ours = dict(zip(FILE_SUFFIXES, self.store.files, strict=True))
        aside = f"{path}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        while any(os.path.lexists(aside + suffix) for suffix in FILE_SUFFIXES):  # (twice in a second)
            aside += "+"
        moved = ""
        for suffix in FILE_SUFFIXES:
            try:
                st = os.stat(path + suffix)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) == ours.get(suffix):
                os.unlink(path + suffix)
            else:
                os.rename(path + suffix, aside + suffix)
                moved = moved or aside
        return moved


def _sync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    for suffix in ("", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
