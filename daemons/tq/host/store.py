"""The durable job store: one SQLite file in WAL mode, written only by tq-host.

Writes open a transaction lazily; the host commits once per loop step, so every
submit, dispatch and result of that step shares one fsync (group commit). A
reply is sent only after the commit that made it true.

With durability = "full", only a commit that acknowledges something (a submit,
a cancel, an answered wait) is fsync'd: an assignment or a result that no one
was told of rides on the next fsync. WAL frames are appended in order, so that
fsync covers every commit before it; until then a power loss (not a crash of
tq-host) can undo them, and the job runs again.

Opening the file and making or migrating its schema are storefile.py's.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable

from ..states import FINAL
from .listing import stored_page
from .records import (
    COLUMNS,
    FRESH_ROW,
    INSERT,
    INSERT_FRESH,
    INSERT_SENT,
    RESTING,
    ROW,
    SENT_ROW,
    UPDATE_ROWS,
    UPDATE_SQL,
    JobRecord,
    not_run,
    only_sent,
    record,
)
from .storefaults import describe
from .storefile import STORE_FILE, StoreError, connect, held_files, upgrade

COMMIT_TIMES_KEPT = 512  # commit times kept (commit_seconds) before they are handed to on_commit_seconds
_FINAL_SQL = ",".join(f"'{s}'" for s in sorted(FINAL))  # the SQL list of final states


class Store:
    def __init__(self, state_dir: str, durability: str = "full",
                 on_commit_seconds: Callable[[list[float]], None] = lambda times: None) -> None:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
        self.path = os.path.join(state_dir, STORE_FILE)
        # Each COMMIT's time (seconds, with its fsync when one is due), for the metrics: a list append per
        # commit; every COMMIT_TIMES_KEPT of them go to on_commit_seconds (tq-host: the metrics' histogram).
        self.commit_seconds: list[float] = []
        self.on_commit_seconds = on_commit_seconds
        self.durability = durability
        self._synchronous = ""  # the PRAGMA synchronous in force
        self._unsynced = False  # a commit since the last fsync was not fsync'd
        self.db = self._connect()
        try:
            upgrade(self.db, self.path)
            self.next_id = self._max_id() + 1
        except sqlite3.Error as e:
            self.db.close()
            raise StoreError(describe(self.path, e)) from None
        except StoreError:
            self.db.close()
            raise
        self.files = held_files(self.path)  # the store's files as opened: storewatch.py tells when they go
        self._new: dict[int, JobRecord] = {}  # staged inserts and updates, written by flush()
        self._dirty: dict[int, tuple[JobRecord, str]] = {}  # id -> (job, which of UPDATES covers its changes)
        self._resting: dict[tuple[str, int], bool] = {}  # (state, id) -> whether its row is in resting, at flush

    def _connect(self) -> sqlite3.Connection:
        """Open the file at self.path as tq-host holds it (storefile.connect), at the level of fsync in force."""
        level = "FULL" if self.durability == "full" else "NORMAL"
        db = connect(self.path, level)
        self._synchronous = level
        return db

    def reopen(self) -> None:
        """Close the connection and open the file at self.path again (storewatch.py, once it put the store back
        there). Nothing may be staged or in a transaction."""
        self.db.close()
        self.db = self._connect()
        self.files = held_files(self.path)

    def set_durability(self, durability: str) -> None:
        """"full": each acknowledging commit is fsync'd; "normal": the WAL is fsync'd at checkpoints only."""
        self._unsynced = self._unsynced or durability != self.durability  # normal's commits were not fsync'd
        self.durability = durability
        if not self.db.in_transaction:
            self._set_synchronous(durability == "full")

    def _set_synchronous(self, fsync: bool) -> None:
        """Whether the next transaction's commit is fsync'd. SQLite takes the level only between transactions."""
        level = "FULL" if fsync else "NORMAL"
        if level != self._synchronous:
            self.db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    # SQLite itself may end a transaction on an error (SQLITE_FULL): ask it, keep no flag of our own.
    def _begin(self, acknowledged: bool = True) -> None:
        """Open the transaction if none is; one begun before the step knows its replies (a prune, a query) is
        fsync'd as if it acknowledged something."""
        if not self.db.in_transaction:
            self._set_synchronous(acknowledged and self.durability == "full")
            self.db.execute("BEGIN")  # tq-host is the only writer: no need to take the lock up front

    def commit(self, acknowledged: bool = True) -> bool:
        """Write what was staged: one transaction, fsync'd with durability=full when it `acknowledged` something
        (a reply waits for it), else left for the next fsync (see the module's docstring). False: nothing to
        write."""
        self.flush(acknowledged)
        if not self.db.in_transaction:
            if not (acknowledged and self._unsynced):
                return False
            self._begin()  # nothing new, but a reply tells of a change not yet fsync'd: a row, so that one is
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('synced_at', ?)", (str(time.time()),))
        began = time.perf_counter()
        self.db.execute("COMMIT")
        self.commit_seconds.append(time.perf_counter() - began)
        self._unsynced = self._synchronous == "NORMAL" and self.durability == "full"
        if len(self.commit_seconds) >= COMMIT_TIMES_KEPT:
            self.hand_over_commit_seconds()
        return True

    def hand_over_commit_seconds(self) -> None:
        """The commit times kept so far go to on_commit_seconds (the metrics' histogram)."""
        self.on_commit_seconds(self.commit_seconds)
        self.commit_seconds.clear()

    def rollback(self) -> None:
        self._new.clear()
        self._dirty.clear()
        self._resting.clear()
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.next_id = self._max_id() + 1

    def _max_id(self) -> int:
        (top,) = self.db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()
        return int(top)

    def insert(self, job: JobRecord) -> int:
        """Stage a new job and give it its id (tq-host is the only writer: ids are handed out here)."""
        job.id = self.next_id
        self.next_id += 1
        self._new[job.id] = job
        return job.id

    def update(self, job: JobRecord, change: str = "any") -> None:
        """Stage a change of a job's mutable fields; the last change in a step is the one written.

        `change` names the columns it touched (a key of UPDATES): two different ones in a step write all.
        """
        if job.id in self._new:
            return
        staged = self._dirty.get(job.id)
        self._dirty[job.id] = (job, change if staged is None or staged[1] == change else "any")

    def rest(self, job_id: int, state: str, rests: bool = True) -> None:
        """Stage a job's entering (or, rests=False, leaving) a resting state (records.RESTING): its row in the table
        resting, through which `query` lists that state, written by the flush that writes the job's own row."""
        self._resting[(state, job_id)] = rests

    def flush(self, acknowledged: bool = True) -> None:
        """Write the staged jobs with one statement per kind (executemany), inside the open transaction."""
        if not self._new and not self._dirty and not self._resting:
            return
        self._begin(acknowledged)
        if self._new:
            fresh = [j for j in self._new.values() if not_run(j)]
            if fresh:  # not yet run: the columns that would be 0 or NULL are left to their defaults
                self.db.executemany(INSERT_FRESH, map(FRESH_ROW, fresh))
            if len(fresh) < len(self._new):  # dispatched (or more) in the step that submitted them
                sent = [j for j in self._new.values() if only_sent(j)]
                if sent:
                    self.db.executemany(INSERT_SENT, map(SENT_ROW, sent))
                if len(fresh) + len(sent) < len(self._new):
                    self.db.executemany(INSERT, (ROW(j) for j in self._new.values()
                                                  if not not_run(j) and not only_sent(j)))
            self._new.clear()
        if self._dirty:
            kinds: dict[str, list[JobRecord]] = {}
            for job, kind in self._dirty.values():
                kinds.setdefault(kind, []).append(job)
            for kind, jobs in kinds.items():
                self.db.executemany(UPDATE_SQL[kind], map(UPDATE_ROWS[kind], jobs))
            self._dirty.clear()
        if self._resting:  # (one entry per (state, id): the last change in the step is the one written)
            staged = self._resting.items()
            self.db.executemany("DELETE FROM resting WHERE state=? AND id=?", [k for k, rests in staged if not rests])
            self.db.executemany("INSERT OR IGNORE INTO resting VALUES (?, ?)", [k for k, rests in staged if rests])
            self._resting.clear()

    def get(self, job_id: int) -> JobRecord | None:
        staged = self._new.get(job_id) or self._dirty.get(job_id, (None, ""))[0]
        if staged is not None:
            return staged
        row = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return record(row) if row else None

    def open_jobs(self) -> list[JobRecord]:
        """Every job not in a final state, for recovery at start."""
        self.flush()
        rows = self.db.execute(
            f"SELECT {','.join(COLUMNS)} FROM jobs WHERE state NOT IN ({_FINAL_SQL}) ORDER BY id")
        return [record(r) for r in rows]

    def query(self, state: str | None = None, queue: str | None = None, task: str | None = None,
              limit: int = 50, after: int | None = None) -> list[JobRecord]:
        """Up to `limit` jobs that match, newest first; `after`: only ids below it (listing.stored_page)."""
        self.flush()
        return stored_page(self.db, state, queue, task, limit, after)

    def count_final(self) -> dict[str, int]:
        self.flush()
        rows = self.db.execute(
            f"SELECT state, count(*) FROM jobs WHERE state IN ({_FINAL_SQL}) GROUP BY state")
        return {state: n for state, n in rows}

    def prune(self, before: float, excess: int, limit: int) -> dict[str, int]:
        """Delete up to `limit` finished jobs, oldest id first: those finished before `before`, then `excess` more.

        Returns how many were deleted per state. Frees their pages for reuse (incremental vacuum). The
        newest job is never deleted, so that max(id) + 1 never hands out an id a client has seen.

        Only the `limit` oldest finished jobs (by id) are looked at: a call reads that many rows, whatever the
        store holds. (A DELETE that looked for jobs finished before `before` in the whole table read every row
        when none was: 240 ms per call with 1,000,000 kept, and once over retain_count the host called this
        every step, so a drain fell from 12,000 jobs a second to 250.) A job finished long ago behind more than
        `limit` younger ones of smaller ids waits until they go; ids follow submission, so those are rare.
        """
        self.flush()
        final = f"state IN ({_FINAL_SQL}) AND id < (SELECT max(id) FROM jobs)"
        oldest = self.db.execute(f"SELECT id, finished_at FROM jobs WHERE {final} ORDER BY id LIMIT ?",
                                 (limit,)).fetchall()
        aged = [job_id for job_id, finished_at in oldest if finished_at is not None and finished_at < before]
        more = min(excess - len(aged), limit - len(aged))
        if more > 0:
            taken = set(aged)
            aged += [job_id for job_id, _ in oldest if job_id not in taken][:more]
        if not aged:
            return {}  # nothing to do: no write transaction, no fsync
        self._begin()
        rows = self.db.execute("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) RETURNING state, id",
                               (json.dumps(aged),)).fetchall()
        self.db.executemany("DELETE FROM resting WHERE state=? AND id=?", [r for r in rows if r[0] in RESTING])
        self.db.execute(f"PRAGMA incremental_vacuum({len(rows)})")
        deleted: dict[str, int] = {}
        for state, _ in rows:
            deleted[state] = deleted.get(state, 0) + 1
        return deleted

    def save_worker(self, instance: str, pid: int, queues: list[str], state: str, seen_at: float) -> None:
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO workers VALUES (?,?,?,?,?)",
                        (instance, pid, json.dumps(queues), state, seen_at))

    def delete_worker(self, instance: str) -> None:
        self._begin()
        self.db.execute("DELETE FROM workers WHERE instance=?", (instance,))

    def paused_queues(self) -> set[str]:
        return {name for (name,) in self.db.execute("SELECT name FROM queues WHERE paused")}

    def set_paused(self, queue: str, paused: bool) -> None:
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO queues VALUES (?, ?)", (queue, int(paused)))

    def schedules(self) -> dict[str, tuple[float, int | None, str | None]]:
        """Each schedule's last run time, its latest job, and why that run was not submitted (None: it was)."""
        rows = self.db.execute("SELECT s.name, s.last_run, s.last_job, e.error FROM schedules s "
                               "LEFT JOIN schedule_errors e ON e.name = s.name")
        return {name: (last, job, error) for name, last, job, error in rows}

    def save_schedule(self, name: str, last_run: float, last_job: int | None, last_error: str | None = None) -> None:
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO schedules VALUES (?, ?, ?)", (name, last_run, last_job))
        if last_error is None:
            self.db.execute("DELETE FROM schedule_errors WHERE name = ?", (name,))
        else:
            self.db.execute("INSERT OR REPLACE INTO schedule_errors VALUES (?, ?)", (name, last_error))

    def tokens(self) -> list[tuple[str, bytes, str, bool, float, int | None]]:
        """Every API token: name, SHA-256 of its text, user, read-only, created_at, the user's uid (None: made
        before tq kept it)."""
        rows = self.db.execute("SELECT name, hash, user, read_only, created_at, uid FROM tokens ORDER BY name")
        return [(n, bytes(h), u, bool(r), t, i) for n, h, u, r, t, i in rows]

    def save_token(self, name: str, digest: bytes, user: str, read_only: bool, created_at: float, uid: int) -> None:
        self._begin()
        self.db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                        (name, digest, user, int(read_only), created_at, uid))

    def set_token_uid(self, name: str, uid: int) -> None:
        """A token made before tq kept its user's uid takes the uid its user has at its first use."""
        self._begin()
        self.db.execute("UPDATE tokens SET uid = ? WHERE name = ? AND uid IS NULL", (uid, name))

    def delete_token(self, name: str) -> None:
        self._begin()
        self.db.execute("DELETE FROM tokens WHERE name = ?", (name,))

    def children(self, job_id: int) -> list[int]:
        """The jobs that wait for or follow this one."""
        self.flush()
        return [i for (i,) in self.db.execute("SELECT id FROM jobs WHERE parent=? ORDER BY id", (job_id,))]

    def workers(self) -> list[tuple[str, int, list[str], str, float]]:
        rows = self.db.execute("SELECT instance, pid, queues, state, seen_at FROM workers ORDER BY instance")
        return [(i, p, json.loads(q), s, t) for i, p, q, s, t in rows]

    def close(self) -> None:
        self.rollback()
        self.db.close()
