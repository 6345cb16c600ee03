"""The store on a real SQLite file: what is staged is what lands, whichever UPDATE writes it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tq.store import JobRecord, Store, StoreError

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
        assert store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
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


def test_a_store_written_by_a_newer_tq_is_refused_with_the_reason(tmp_path: Path) -> None:
    Store(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "tq.sqlite3")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, written by a newer tq"):
        Store(str(tmp_path))
