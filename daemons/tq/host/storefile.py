"""The store's file: where it is (tq.sqlite3 in host.state_dir, with its -wal and -shm), opening it as tq-host
holds it (WAL, an exclusive lock, the level of fsync, its files readable by tq-host's group only), and making its
tables or bringing an older schema up to SCHEMA_VERSION. What is read and written in it is store.py's."""

from __future__ import annotations

import os
import sqlite3

from ..ownership import restrict
from .records import INDEXES, MIGRATIONS, SCHEMA, SCHEMA_VERSION
from .storefaults import describe

STORE_FILE = "tq.sqlite3"  # in host.state_dir
FILE_SUFFIXES = ("", "-wal", "-shm")  # the store's files: the database, its write-ahead log, the log's index


class StoreError(Exception):
    """The store cannot be opened or written; the message says why."""


def held_files(path: str) -> tuple[tuple[int, int], ...]:
    """(st_dev, st_ino) of each of the store's files (FILE_SUFFIXES); (0, 0) for one that is not there."""
    found = []
    for suffix in FILE_SUFFIXES:
        try:
            st = os.stat(path + suffix)
            found.append((st.st_dev, st.st_ino))
        except OSError:
            found.append((0, 0))
    return tuple(found)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """Open the file at `path` as tq-host holds it, its PRAGMA synchronous `synchronous` ("FULL" or "NORMAL")."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(describe(path, e)) from None
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect for a new file: pruning frees pages
        # Only tq-host opens the store: holding its lock spares file locking on every commit, and WAL then
        # keeps its index in memory instead of a shared -shm file. Other readers wait until tq-host stops.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        # The hot pages are the newest leaves and the inner pages: 512 KiB holds them (a larger cache
        # measured no faster and stayed resident after a burst).
        db.execute("PRAGMA cache_size=-512")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the WAL file is made with the first read
    except sqlite3.Error as e:
        db.close()
        raise StoreError(describe(path, e)) from None
    for suffix in FILE_SUFFIXES:
        restrict(path + suffix, 0o660)
    return db


def upgrade(db: sqlite3.Connection, path: str) -> None:
    """Create the tables of a new store, or bring an older schema up to SCHEMA_VERSION; refuse a newer one."""
    with db:  # one transaction: a failed upgrade leaves the store as it was
        db.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(f"store {path} has schema version {version}, written by a newer tq; this "
                             f"tq reads up to version {SCHEMA_VERSION}: install the newer tq again")
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                db.execute(statement)
        for statement in INDEXES:
            db.execute(statement)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
