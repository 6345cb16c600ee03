"""The store on a real SQLite file: what is staged is what lands, whichever UPDATE writes it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tq.host.records import COLUMNS, SCHEMA_VERSION, JobRecord
from tq.host.store import Store
from tq.host.storefile import StoreError

# What the host does to a job, as (change kind, mutation): the kind names the columns the mutation may touch.
STEPS = {
    "dispatched": ("dispatched", lambda j, n: _set(j, state="running", attempts=j.attempts + 1, worker=str(n % 4),
                                                    started_at=float(n))),
    "done": ("done", lambda j, n: _set(j, state="done", result=f"out {n}", error=None, finished_at=float(n),
                                       started_at=float(n) - 0.5)),
    "done_usage": ("done_usage", lambda j, n: _set(j, state="done", result=f"out {n}", error=None,
                                                   finished_at=float(n), usage_json=f'{{"sys":{n}}}')),
    "failed": ("any", lambda j, n: _set(j, state="failed", error=f"boom {n}", run_at=float(n), finished_at=float(n))),
    "queued": ("any", lambda j, n: _set(j, state="queued", worker=None, attempts=max(0, j.attempts - 1))),
}


def _set(job: JobRecord, **fields: object) -> None:
    for name, value in fields.items():
        setattr(job, name, value)


def _job() -> JobRecord:
    return JobRecord(id=0, task="t", args_json='["a"]', payload_json=None, queue="default", priority=0,
                     state="queued", attempts=0, retries=3, timeout=30.0, backoff=1.0, backoff_max=60.0,
                     run_at=None, worker=None, result=None, error=None, submitter=0, created_at=time.time(),
                     started_at=None, finished_at=None, handler_json='{"handler":"echo"}', usage_json=None)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.lists(st.tuples(st.sampled_from(sorted(STEPS)), st.booleans()), max_size=12))
def test_every_staged_change_lands_whichever_statement_writes_it(tmp_path_factory: object, insert_alone: bool,
                                                                 steps: list[tuple[str, bool]]) -> None:
    """Inserted alone (the short INSERT) or changed in the same step (the full one), then UPDATEs of each kind."""
    state_dir = Path(tmp_path_factory.mktemp("store"))  # type: ignore[attr-defined]
    store = Store(str(state_dir))
    try:
        job = _job()
        store.insert(job)
        if insert_alone:
            store.commit()
        for n, (step, commit) in enumerate(steps):
            kind, mutate = STEPS[step]
            mutate(job, n)
            store.update(job, kind)
            if commit:  # changes of different kinds may share a commit, or not
                store.commit()
        store.commit()
        assert store.get(job.id) == job  # read back from the file: every column
    finally:
        store.close()


# The schema of version 1, as tq 0.1.0 (before jobs carried their handler) wrote it.
SCHEMA_V1 = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, task TEXT NOT NULL, args TEXT NOT NULL, payload TEXT,
    queue TEXT NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL, timeout REAL NOT NULL, backoff REAL NOT NULL, backoff_max REAL NOT NULL, run_at REAL,
    worker TEXT, result TEXT, error TEXT, submitter INTEGER, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL);
CREATE TABLE workers (instance TEXT PRIMARY KEY, pid INTEGER, queues TEXT NOT NULL, state TEXT NOT NULL,
    seen_at REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO jobs (id, task, args, queue, priority, state, retries, timeout, backoff, backoff_max, created_at)
    VALUES (7, 'report', '["a"]', 'default', 0, 'queued', 3, 30.0, 1.0, 300.0, 1700000000.0);
INSERT INTO jobs (id, task, args, queue, priority, state, attempts, retries, timeout, backoff, backoff_max, worker,
    result, created_at, started_at, finished_at)
    VALUES (8, 'report', '[]', 'default', 0, 'done', 1, 3, 30.0, 1.0, 300.0, '1', 'ok', 1700000000.0, 1700000001.0,
            1700000002.0);
"""


def test_a_store_of_schema_1_is_upgraded_in_place_and_keeps_its_jobs(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "tq.sqlite3")
    db.executescript(SCHEMA_V1)
    db.close()
    store = Store(str(tmp_path))
    try:
        queued, done = store.get(7), store.get(8)
        assert queued is not None and (queued.task, queued.args_json, queued.state) == ("report", '["a"]', "queued")
        assert queued.handler_json is None  # resolved at dispatch from the configuration
        assert done is not None and (done.state, done.result, done.usage_json) == ("done", "ok", None)
        assert [j.id for j in store.open_jobs()] == [7]
        assert store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        store.update(queued)  # the new columns are written like the others
        queued.usage_json = '{"user":0.5}'
        store.commit()
    finally:
        store.close()
    again = Store(str(tmp_path))
    try:
        job = again.get(7)
        assert job is not None and job.usage_json == '{"user":0.5}'
    finally:
        again.close()


# The schema of version 2, as tq wrote it from issue 10 on (jobs carry their handler and usage), with jobs in
# every state it knew, a worker, and a WAL left by a host killed with kill -9 (the file is copied as is).
SCHEMA_V2 = """
PRAGMA journal_mode=WAL;
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, task TEXT NOT NULL, args TEXT NOT NULL, payload TEXT, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL,
    timeout REAL NOT NULL, backoff REAL NOT NULL, backoff_max REAL NOT NULL, run_at REAL, worker TEXT,
    result TEXT, error TEXT, submitter INTEGER, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    handler TEXT, usage TEXT);
CREATE TABLE workers (instance TEXT PRIMARY KEY, pid INTEGER, queues TEXT NOT NULL, state TEXT NOT NULL,
    seen_at REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO workers VALUES ('1', 812, '["default"]', 'live', 1700000000.0);
INSERT INTO jobs (id, task, args, payload, queue, priority, state, attempts, retries, timeout, backoff, backoff_max,
    run_at, worker, result, error, submitter, created_at, started_at, finished_at, handler, usage) VALUES
    (1, 'a', '["x"]', NULL, 'default', 0, 'queued', 0, 3, 30.0, 1.0, 300.0, NULL, NULL, NULL, NULL, 1000,
     1700000000.0, NULL, NULL, '{"handler":"echo"}', NULL),
    (2, 'a', '[]', '"p"', 'mail', 5, 'running', 1, 3, 30.0, 1.0, 300.0, NULL, '1', NULL, NULL, 1000, 1700000000.0,
     1700000001.0, NULL, '{"handler":"command","command":["true"]}', NULL),
    (3, 'a', '[]', NULL, 'default', 0, 'delayed', 0, 3, 30.0, 1.0, 300.0, 1800000000.0, NULL, NULL, NULL, 0,
     1700000000.0, NULL, NULL, '{"handler":"echo"}', NULL),
    (4, 'a', '[]', NULL, 'default', 0, 'failed', 1, 3, 30.0, 1.0, 300.0, 1700000100.0, '1', NULL, 'boom', 0,
     1700000000.0, 1700000001.0, NULL, '{"handler":"echo"}', '{"exit":1}'),
    (5, 'a', '[]', NULL, 'default', 0, 'done', 1, 3, 30.0, 1.0, 300.0, NULL, '1', 'a processed', NULL, 0,
     1700000000.0, 1700000001.0, 1700000002.0, '{"handler":"echo"}', NULL),
    (6, 'a', '[]', NULL, 'default', 0, 'dead', 4, 3, 30.0, 1.0, 300.0, NULL, '1', NULL, 'boom', 0, 1700000000.0,
     1700000001.0, 1700000002.0, '{"handler":"echo"}', '{"exit":1}'),
    (7, 'a', '[]', NULL, 'default', 0, 'cancelled', 0, 3, 30.0, 1.0, 300.0, NULL, NULL, NULL, NULL, 0,
     1700000000.0, NULL, 1700000002.0, '{"handler":"echo"}', NULL);
"""


def test_a_store_of_schema_2_is_upgraded_in_place_and_keeps_every_job(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "tq.sqlite3")
    db.executescript(SCHEMA_V2)
    before = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    db.close()
    store = Store(str(tmp_path))
    try:
        assert store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        added = ("unique_key", "parent", "link")  # since schema 2
        after = store.db.execute(f"SELECT {', '.join(c for c in COLUMNS if c not in added)} FROM jobs "
                                 "ORDER BY id").fetchall()
        assert after == before  # every job, every column, as it was
        assert [j.id for j in store.open_jobs()] == [1, 2, 3, 4] and store.get(2).unique_key is None  # type: ignore
        assert store.workers() == [("1", 812, ["default"], "live", 1700000000.0)]
        assert store.paused_queues() == set()
        store.set_paused("mail", True)  # the new table is written like the others
        store.commit()
    finally:
        store.close()
    again = Store(str(tmp_path))
    try:
        assert again.paused_queues() == {"mail"} and again.next_id == 8
    finally:
        again.close()


def test_a_store_written_by_a_newer_tq_is_refused_with_the_reason(tmp_path: Path) -> None:
    Store(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "tq.sqlite3")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, written by a newer tq"):
        Store(str(tmp_path))


def test_prune_deletes_the_aged_then_the_excess_oldest_first_and_never_an_open_or_the_newest_job(
        tmp_path: Path) -> None:
    """Among the oldest finished jobs (by id): those finished before the cut-off, then `excess` more, at most
    `limit` a call; open jobs and the newest job stay."""
    store = Store(str(tmp_path))
    try:
        # (state, finished_at): the cut-off below is 1000
        plan = [("queued", None), ("done", 100.0), ("done", 5000.0), ("dead", 50.0), ("cancelled", 6000.0),
                ("failed", 10.0), ("done", 7000.0), ("done", 8000.0), ("done", 1.0)]
        ids = []
        for state, finished_at in plan:
            job = _job()
            _set(job, state=state, finished_at=finished_at)
            ids.append(store.insert(job))
        store.commit()
        assert store.prune(1000.0, 0, 10) == {"done": 1, "dead": 1}  # aged: ids[1] and ids[3]
        store.commit()
        assert store.prune(1000.0, 2, 10) == {"done": 1, "cancelled": 1}  # the two oldest left: ids[2], ids[4]
        store.commit()
        assert store.prune(1000.0, 5, 1) == {"done": 1}  # at most `limit`: ids[6]
        store.commit()
        assert store.prune(float("inf"), 5, 10) == {"done": 1}  # ids[7]; never ids[8], the newest
        store.commit()
        assert store.prune(float("inf"), 5, 10) == {}
        left = [(j.id, j.state) for j in map(store.get, ids) if j is not None]
        assert left == [(ids[0], "queued"), (ids[5], "failed"), (ids[8], "done")]
    finally:
        store.close()


def _steps_of_a_prune(state_dir: Path, finished: int) -> int:
    """SQLite's virtual-machine steps (counted by its progress handler) of one prune over `finished` young
    finished jobs: over retain_count, so the host would call it every step."""
    store = Store(str(state_dir))
    try:
        store.db.execute("BEGIN")
        store.db.executemany(
            "INSERT INTO jobs (task, args, queue, priority, state, retries, timeout, backoff, backoff_max, created_at,"
            " finished_at) VALUES ('t', '[]', 'default', 0, 'done', 3, 30.0, 1.0, 300.0, ?, ?)",
            ((float(i), float(i)) for i in range(finished)))
        store.db.execute("COMMIT")
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        store.db.set_progress_handler(count, 100)
        assert store.prune(-1.0, 10, 100) == {"done": 10}
        store.db.set_progress_handler(None, 0)
        return steps[0]
    finally:
        store.close()


def test_a_prune_reads_as_many_rows_whatever_the_store_holds(tmp_path: Path) -> None:
    """The work of one call is bounded by its limit, not by the jobs kept (it read them all: 240 ms a call with
    1,000,000 kept, every step of the host once over retain_count)."""
    small = _steps_of_a_prune(tmp_path / "small", 2_000)
    large = _steps_of_a_prune(tmp_path / "large", 40_000)
    assert large < small * 1.5, (small, large)
