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
    "done": ("done", lambda j, n: _set(j, state="done", result=f"out {n}", error=None, finished_at=float(n))),
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
                     started_at=None, finished_at=None)


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


def test_an_older_schema_is_upgraded_in_place_and_keeps_its_jobs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path))
    job = _job()
    store.insert(job)
    store.commit()
    store.close()
    from tq import store as store_module
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(store_module, "MIGRATIONS", {1: ("ALTER TABLE jobs ADD COLUMN note TEXT",)})
    upgraded = Store(str(tmp_path))
    try:
        assert upgraded.get(job.id) == job
        assert upgraded.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        assert "note" in [row[1] for row in upgraded.db.execute("PRAGMA table_info(jobs)")]
    finally:
        upgraded.close()


def test_a_store_written_by_a_newer_tq_is_refused_with_the_reason(tmp_path: Path) -> None:
    Store(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "tq.sqlite3")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, written by a newer tq"):
        Store(str(tmp_path))
