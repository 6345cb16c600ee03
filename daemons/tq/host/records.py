"""A job as tq-host keeps it (JobRecord), and how it maps to the store's table: the schema, its migrations,
and the columns each kind of write binds."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..states import FINAL, JobState

SCHEMA_VERSION = 7
# API tokens (tq-host/tokens.py): only each token's SHA-256 is kept, never its text; uid is its user's when it was
# made (NULL for a token made before version 7: its user's uid at its first use is taken).
TOKENS_TABLE = ("CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, hash BLOB UNIQUE NOT NULL, user TEXT, "
                "read_only INTEGER, created_at REAL, uid INTEGER)")
# The table as version 4 made it: a store older than that has no token, and SCHEMA has just made the table anew.
TOKENS_TABLE_4 = ("CREATE TABLE tokens (name TEXT PRIMARY KEY, hash BLOB UNIQUE NOT NULL, user TEXT, "
                  "read_only INTEGER, created_at REAL)")
# The final states a job rests in until `tqctl retry` or pruning, each listed through the table resting (below).
RESTING = frozenset(s.value for s in FINAL if s != JobState.DONE)
RESTING_SQL = ",".join(f"'{s}'" for s in sorted(RESTING))  # as an SQL list
RESTING_TABLE = ("CREATE TABLE IF NOT EXISTS resting (state TEXT NOT NULL, id INTEGER NOT NULL, "
                 "PRIMARY KEY (state, id)) WITHOUT ROWID")
# Statements that take a store from schema version N to N + 1, run in one transaction at open: a store
# written by an older tq is upgraded in place, and keeps every job. (New tables come from SCHEMA.)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE jobs ADD COLUMN handler TEXT", "ALTER TABLE jobs ADD COLUMN usage TEXT"),
    2: ("ALTER TABLE jobs ADD COLUMN unique_key TEXT",),
    3: ("ALTER TABLE jobs ADD COLUMN parent INTEGER", "ALTER TABLE jobs ADD COLUMN link INTEGER"),
    4: ("DROP TABLE tokens", TOKENS_TABLE_4),
    5: (f"INSERT INTO resting SELECT state, id FROM jobs WHERE state IN ({RESTING_SQL})",),
    6: ("ALTER TABLE tokens ADD COLUMN uid INTEGER",),
}
# After the migrations: a job's children are looked up by `tqctl show` (jobs without a parent cost it nothing).
INDEXES = ("CREATE INDEX IF NOT EXISTS jobs_parent ON jobs(parent) WHERE parent IS NOT NULL",)
# How a job is linked to its parent (column link): it waits for it (--after), it is the next step of a chain and
# takes its result as payload (--then), or it was submitted when the parent finished (on_success, on_failure).
AFTER, CHAIN, FOLLOW_UP = 0, 1, 2
# The largest id a job can have: SQLite's integers are 64-bit, and an id past this is no job (not an overflow).
MAX_JOB_ID = 2**63 - 1

# No secondary indexes: each would cost every submit and every result a B-tree write. Recovery reads the
# whole table once at start, and pruning walks it from the oldest id. Not even one on state for `tqctl list
# --state`: a partial index of the states jobs rest in (dead, cancelled, delayed ...), which no done job is in,
# measured tq-host's instructions per drained job +75% (389,000 against 222,000): SQLite reads and tests the old
# row of every UPDATE that sets state. Instead a list by state is answered where it is cheap (JobTable.query):
# an open state from memory; done, and no state, by walking ids down from `after` (the primary key; done is
# most of the store); dead and cancelled through the table resting, (state, id) of each job in one of them,
# which tq-host writes only when a job enters or leaves it (JobTable._move, retry, Store.prune): a page of the
# few dead among a million done seeks there, and a done job's path writes nothing more.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    args TEXT NOT NULL,
    payload TEXT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL,
    timeout REAL NOT NULL,
    backoff REAL NOT NULL,
    backoff_max REAL NOT NULL,
    run_at REAL,
    worker TEXT,
    result TEXT,
    error TEXT,
    submitter INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    handler TEXT,
    usage TEXT,
    unique_key TEXT,
    parent INTEGER,
    link INTEGER
);
CREATE TABLE IF NOT EXISTS workers (
    instance TEXT PRIMARY KEY,
    pid INTEGER,
    queues TEXT NOT NULL,
    state TEXT NOT NULL,
    seen_at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, last_run REAL NOT NULL, last_job INTEGER);
-- why a schedule's last run was not submitted (a row only while that is so): a table of its own, which a store of
-- any version gains at open, not a column that would need a migration
CREATE TABLE IF NOT EXISTS schedule_errors (name TEXT PRIMARY KEY, error TEXT NOT NULL);
""" + TOKENS_TABLE + ";\n" + RESTING_TABLE + ";\n"

COLUMNS = ("id", "task", "args", "payload", "queue", "priority", "state", "attempts", "retries", "timeout",
            "backoff", "backoff_max", "run_at", "worker", "result", "error", "submitter", "created_at",
            "started_at", "finished_at", "handler", "usage", "unique_key", "parent", "link")


# A new job that has not run yet: attempts (0), worker, result, error, started_at and finished_at (NULL) are
# the defaults; binding fewer values makes the INSERT cheaper (docs/performance.md).
FRESH = ("id", "task", "args", "payload", "queue", "priority", "state", "retries", "timeout", "backoff",
          "backoff_max", "run_at", "submitter", "created_at", "handler")

# The columns each kind of UPDATE writes: a narrow UPDATE costs SQLite less than one of all eight columns, and
# dispatches and results are most of them.
UPDATES = {
    "dispatched": ("state", "attempts", "worker", "started_at"),
    "started": ("state", "started_at"),
    "done": ("state", "result", "error", "started_at", "finished_at"),  # no cost recorded (echo), first attempt
    "done_usage": ("state", "result", "error", "started_at", "finished_at", "usage"),
    "any": ("state", "attempts", "run_at", "worker", "result", "error", "started_at", "finished_at", "usage",
            "payload"),
    "released": ("state", "payload"),  # a chain's next step: queued, with the result before it as payload
}


JSON_COLUMNS = ("args", "payload", "handler", "usage")  # kept as JSON text: JobRecord.<column>_json


def values(columns: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A job's values for these columns, in order (args and payload are kept as JSON: args_json, payload_json)."""
    return operator.attrgetter(*(f"{c}_json" if c in JSON_COLUMNS else c for c in columns))


# A new job dispatched in the step that submitted it (the common case of a producer and idle workers): the fresh
# columns and the dispatch's own.
SENT = (*FRESH, "attempts", "worker", "started_at")
ROW, FRESH_ROW, SENT_ROW = values(COLUMNS), values(FRESH), values(SENT)
UPDATE_ROWS = {change: values((*columns, "id")) for change, columns in UPDATES.items()}
INSERT_FRESH = f"INSERT INTO jobs ({','.join(FRESH)}) VALUES ({','.join('?' * len(FRESH))})"
INSERT_SENT = f"INSERT INTO jobs ({','.join(SENT)}) VALUES ({','.join('?' * len(SENT))})"
INSERT = f"INSERT INTO jobs ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
UPDATE_SQL = {change: f"UPDATE jobs SET {'=?, '.join(columns)}=? WHERE id=?" for change, columns in UPDATES.items()}


@dataclass(slots=True)  # no __dict__: a backlog of queued jobs costs less memory
class JobRecord:
    """One job as the host keeps it in memory and in the store."""

    id: int
    task: str
    args_json: str  # the host never looks inside args and payload: it keeps the JSON it stores and sends
    payload_json: str | None
    queue: str
    priority: int
    state: str  # a JobState's value
    attempts: int
    retries: int
    timeout: float
    backoff: float
    backoff_max: float
    run_at: float | None
    worker: str | None
    result: str | None
    error: str | None
    submitter: int | None
    created_at: float
    started_at: float | None  # when the handler started on the worker (the dispatch time until it reports)
    finished_at: float | None
    handler_json: str | None  # how to run it, resolved at submit (None: a job stored before there was one)
    usage_json: str | None  # what the last attempt cost (CPU, memory, exit status)
    unique_key: str | None = None  # while the job is open, a submit with this key returns it (submit --unique)
    parent: int | None = None  # the job it waits for, or follows (see link)
    link: int | None = None  # AFTER, CHAIN or FOLLOW_UP
    cancel_requested: bool = False  # `tqctl cancel` of the running attempt (not stored: it lasts one attempt)
    lost_on: str | None = None  # the worker its last attempt was lost with: another one takes it if it can

    def public(self) -> dict[str, Any]:
        """The job as tqctl and the client API show it."""
        return {
            "id": self.id, "task": self.task, "args": json.loads(self.args_json),
            "payload": None if self.payload_json is None else json.loads(self.payload_json), "queue": self.queue,
            "priority": self.priority, "state": self.state, "attempts": self.attempts, "retries": self.retries,
            "timeout": self.timeout, "result": self.result, "error": self.error, "worker": self.worker,
            "submitter": self.submitter, "run_at": self.run_at, "created_at": self.created_at,
            "started_at": None if self.state == "assigned" else self.started_at, "finished_at": self.finished_at,
            "handler": None if self.handler_json is None else json.loads(self.handler_json),
            "usage": None if self.usage_json is None else json.loads(self.usage_json), "unique": self.unique_key,
            "parent": self.parent,
        }


def only_sent(j: JobRecord) -> bool:
    """True for a job dispatched and nothing more: the columns SENT leaves out still hold their defaults."""
    return (j.attempts > 0 and j.result is None and j.error is None and j.finished_at is None and j.usage_json is None
            and j.unique_key is None and j.parent is None)


def not_run(j: JobRecord) -> bool:
    """True while the columns FRESH leaves out still hold their defaults."""
    return (j.attempts == 0 and j.worker is None and j.result is None and j.error is None and j.started_at is None
            and j.finished_at is None and j.usage_json is None and j.unique_key is None and j.parent is None)


def record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(*row)  # COLUMNS are the fields in order
