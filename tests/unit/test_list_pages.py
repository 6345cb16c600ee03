"""`list` by state at any store size: an open state is answered from tq-host's memory, dead and cancelled through
the table resting, done and no state by the primary key. Each page is what a scan of every job finds, through
transitions, retries, prunes, restarts and failed commits; a page of dead jobs seeks, it does not scan."""

from __future__ import annotations

import json
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parts import make_parts
from tq import protocol
from tq.host.records import RESTING, SCHEMA_VERSION, JobRecord
from tq.host.server import Conn
from tq.host.store import Store
from tq.states import FINAL, JobState

TOML = '[tasks."#"]\nhandler = "echo"\nretries = 1\nbackoff = "1s"\n'
STATES: list[str | None] = [None, *(s.value for s in JobState)]


class Host:
    """tq-host's parts on one state dir, restarted (closed and assembled again on the same store) at will."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.parts = make_parts(state_dir, TOML)
        self.a, self.b = socket.socketpair()
        self.failed_commits = 0

    def restart(self) -> None:
        self.parts.close()  # what was not committed is lost, as when tq-host is killed
        self.parts = make_parts(self.state_dir, TOML)
        self.parts.jobs.load()  # as tq-host's start recovers (TqHost._recover)
        self.parts.queues.load()

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        self.parts.requests.handle(Conn(self.a, 0), json.dumps({"op": op, "rid": 1, **fields}).encode())
        ((_, reply),) = self.parts.ledger.take()
        return dict(reply)

    def fail_commit(self, table: str, step: Callable[[], None]) -> None:
        """A step's work, then a commit that fails when it writes `table` (a trigger stands in for a full disk),
        recovered from as tq-host does (TqHost._store_failed): rolled back, replies refused, reloaded."""
        db = self.parts.store.db
        for kind in ("INSERT", "UPDATE", "DELETE"):
            db.execute(f"CREATE TEMP TRIGGER fail_{kind.lower()} BEFORE {kind} ON {table} "
                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        try:
            step()
            self.parts.store.commit()
        except sqlite3.Error:
            self.failed_commits += 1
            p = self.parts
            p.stream.undo()
            p.store.rollback()
            p.requests.undo(p.store.next_id, "store write failed")
            p.jobs.load()
            p.queues.load()
        finally:
            for kind in ("insert", "update", "delete"):
                db.execute(f"DROP TRIGGER IF EXISTS fail_{kind}")  # (a rollback took it)
            self.parts.ledger.take()

    def close(self) -> None:
        self.parts.close()
        self.a.close()
        self.b.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path / "state")
    yield h
    h.close()


def every_job(store: Store) -> list[tuple[int, str, str, str]]:
    """(id, state, queue, task) of every job, staged changes included, newest first: the scan to compare with."""
    store.flush()
    return [(i, s, q, t) for i, s, q, t in store.db.execute("SELECT id, state, queue, task FROM jobs ORDER BY id DESC")]


def scanned(rows: list[tuple[int, str, str, str]], state: str | None, queue: str | None, task: str | None,
            limit: int, after: int | None) -> list[int]:
    return [i for i, s, q, t in rows if (state is None or s == state) and (queue is None or q == queue)
            and (task is None or t == task) and (after is None or i < after)][:limit]


def check_pages(host: Host, rng: random.Random) -> None:
    """Every state's page (with and without filters and `after`) is the scan's; resting holds exactly the dead
    and cancelled jobs."""
    p = host.parts
    rows = every_job(p.store)
    resting = p.store.db.execute("SELECT state, id FROM resting ORDER BY state, id").fetchall()
    assert resting == sorted((s, i) for i, s, _, _ in rows if s in RESTING)
    ids = [r[0] for r in rows] or [1]
    for state in STATES:
        asks = [(None, None, 1000, None)] + [(rng.choice([None, "default", "q2"]), rng.choice([None, "a", "b"]),
                                              rng.choice([1, 3, 1000]), rng.choice([None, *ids]))
                                             for _ in range(3)]
        for queue, task, limit, after in asks:
            got = p.jobs.query(state, queue, task, limit, after)
            assert [j.id for j in got] == scanned(rows, state, queue, task, limit, after), (state, queue, task,
                                                                                            limit, after)
            assert all(j is p.jobs.jobs.get(j.id, j) for j in got)  # an open job as the table has it now


def pick(host: Host, rng: random.Random, states: tuple[str, ...]) -> JobRecord | None:
    p = host.parts
    found = [i for i, s, _, _ in every_job(p.store) if s in states]
    return p.jobs.find(rng.choice(found)) if found else None


def act(host: Host, rng: random.Random, action: str) -> None:
    p, jobs = host.parts, host.parts.jobs
    if action == "submit":
        spec: dict[str, Any] = {"task": rng.choice("ab"), "queue": rng.choice(["default", "q2"]),
                                "retries": rng.randint(0, 1)}
        roll = rng.random()
        if roll < 0.2:
            spec["delay"] = 60
        elif roll < 0.35 and (parent := pick(host, rng, tuple(JobState))) is not None:
            spec["after"] = parent.id  # refused after a dead or cancelled one: fine
        host.ask("submit", jobs=[spec] * rng.randint(1, 3))
    elif action == "assign":
        for _ in range(rng.randint(1, 3)):
            ready = jobs.pop_ready(["default", "q2"])
            if ready is not None:
                jobs.assign(ready, "w1")
    elif action == "begin" and (j := pick(host, rng, ("assigned",))) is not None:
        jobs.begin(j, time.time())
    elif action == "finish" and (j := pick(host, rng, ("assigned", "running"))) is not None:
        ok = rng.random() < 0.4
        jobs.finish(j, protocol.Result("w1", j.id, j.attempts, ok, "out" if ok else "", "" if ok else "boom", 0.01,
                                       0.0, {}))
    elif action == "cancel" and (j := pick(host, rng, ("queued", "delayed", "deferred", "failed", "assigned",
                                                        "running"))) is not None:
        jobs.cancel(j)
    elif action == "retry" and (j := pick(host, rng, ("dead", "cancelled", "failed"))) is not None:
        host.ask("retry", id=j.id)
    elif action == "due" and (j := pick(host, rng, ("delayed", "failed"))) is not None:
        j.run_at = time.time() - 1
        jobs.delayed.append((j.run_at, j.id))
        jobs.delayed.sort()
        jobs.promote_due()
    elif action == "prune":
        jobs.prune(rng.choice([0.0, time.time() + 10]), rng.randint(0, 3), rng.randint(1, 5))
    elif action == "commit":
        p.store.commit()
    elif action == "restart":
        if rng.random() < 0.5:
            p.store.commit()
        host.restart()
    elif action == "failed commit":
        steps = [rng.choice(ACTIONS[:-2]) for _ in range(rng.randint(1, 4))]

        def step() -> None:
            for a in steps:
                act(host, rng, a)

        host.fail_commit(rng.choice(["jobs", "resting"]), step)


# The weights of the actions (the last two are never part of a failed commit's step).
ACTIONS = ["submit"] * 4 + ["assign"] * 3 + ["begin", "finish", "finish", "finish", "cancel", "retry", "retry", "due",
                                              "prune", "commit", "commit", "restart", "failed commit"]


@pytest.mark.parametrize("seed", range(6))
def test_every_state_s_page_is_what_a_scan_of_every_job_finds(host: Host, seed: int) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    for _ in range(200):
        act(host, rng, rng.choice(ACTIONS))
        check_pages(host, rng)
        seen |= {s for _, s, _, _ in every_job(host.parts.store)}
    assert seen >= FINAL and host.failed_commits > 0  # the mix reached what is under test



def die(host: Host, job_id: int) -> None:
    """The job's attempt fails, its last: dead."""
    j = host.parts.jobs.find(job_id)
    assert j is not None and j.state == "assigned"
    host.parts.jobs.finish(j, protocol.Result("w1", j.id, j.attempts, False, "", "boom", 0.01, 0.0, {}))


def test_a_step_whose_commit_failed_leaves_the_dead_jobs_listed_as_before(host: Host) -> None:
    """The jobs' rows are written, the commit fails at resting's: neither the death nor the retry happened."""
    p = host.parts
    first, second = host.ask("submit", jobs=[{"task": "a", "retries": 0}] * 2)["ids"]
    p.jobs.assign(p.jobs.jobs[first], "w1")
    p.jobs.assign(p.jobs.jobs[second], "w1")
    die(host, first)
    p.store.commit()

    def step() -> None:
        die(host, second)
        assert host.ask("retry", id=first)["ok"]

    host.fail_commit("resting", step)
    for _ in range(2):  # recovered, then restarted
        assert [j.id for j in p.jobs.query("dead", None, None, 10)] == [first]
        assert [j.id for j in p.jobs.query("assigned", None, None, 10)] == [second]
        assert p.store.db.execute("SELECT state, id FROM resting").fetchall() == [("dead", first)]
        host.restart()
        p = host.parts


def a_store_of_schema_5(state_dir: Path, done: int, dead: int, cancelled: int) -> None:
    """A store as tq wrote schema 5 (no table resting): the dead and cancelled jobs among the oldest, then `done`
    done jobs (written with SQL: a million takes seconds)."""
    Store(str(state_dir)).close()
    db = sqlite3.connect(state_dir / "tq.sqlite3")
    db.execute("DROP TABLE IF EXISTS resting")
    db.execute("ALTER TABLE tokens DROP COLUMN uid")  # (added by schema 7)
    db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    states = "CASE WHEN n % 7 = 0 AND n <= ? THEN 'dead' WHEN n % 7 = 1 AND n <= ? THEN 'cancelled' ELSE 'done' END"
    db.execute(f"WITH RECURSIVE n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < ?) "
               f"INSERT INTO jobs (id, task, args, queue, priority, state, retries, timeout, backoff, backoff_max, "
               f"created_at) SELECT n, 't', '[]', 'default', 0, {states}, 0, 1, 1, 1, n FROM n",
               (done + 7 * max(dead, cancelled), 7 * dead, 7 * cancelled))
    db.commit()
    db.close()


def test_a_store_of_schema_5_gains_resting_and_keeps_its_dead_and_cancelled_jobs_listable(tmp_path: Path) -> None:
    a_store_of_schema_5(tmp_path, done=50, dead=3, cancelled=2)
    store = Store(str(tmp_path))
    try:
        assert store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        for state in ("dead", "cancelled", "done"):
            every = [i for (i,) in store.db.execute("SELECT id FROM jobs WHERE state=? ORDER BY id DESC", (state,))]
            assert [j.id for j in store.query(state, limit=1000)] == every and every
            assert [j.id for j in store.query(state, limit=2, after=every[0])] == every[1:3]
        assert store.db.execute("SELECT count(*) FROM resting").fetchone() == (5,)
    finally:
        store.close()


def steps_of(store: Store, state: str | None, after: int | None = None) -> int:
    """SQLite's virtual machine steps (in hundreds) to read a page of 20: the work, not a time."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.db.set_progress_handler(count, 100)
    try:
        assert len(store.query(state, limit=20, after=after)) == 20
    finally:
        store.db.set_progress_handler(None, 100)
    return steps[0]


def test_a_page_of_dead_jobs_among_many_done_reads_its_own_rows_not_the_done(tmp_path: Path) -> None:
    a_store_of_schema_5(tmp_path, done=30_000, dead=100, cancelled=100)
    store = Store(str(tmp_path))
    try:
        dead = [j.id for j in store.query("dead", limit=100)]
        far = steps_of(store, "dead", after=dead[60])
        assert steps_of(store, "dead") == far < 30, far  # a seek, then 20 rows (the walk of main read every done row)
        assert steps_of(store, "done") < 30  # done is most of the store: the primary key's walk is short
    finally:
        store.close()


@pytest.mark.parametrize("state", ["dead", "cancelled"])
def test_a_page_of_a_resting_state_seeks_the_table_resting_and_sorts_nothing(tmp_path: Path, state: str) -> None:
    store = Store(str(tmp_path))
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    try:
        for after, queue in ((None, None), (10, "mail")):
            store.query(state, queue, "t", 20, after)
            plan = " | ".join(r[-1] for r in store.db.execute(f"EXPLAIN QUERY PLAN {statements[-1]}"))
            seek = "(state=? AND id<?)" if after else "(state=?)"
            assert plan == (f"SEARCH resting USING PRIMARY KEY {seek} | SEARCH jobs USING INTEGER PRIMARY KEY "
                            "(rowid=?)"), plan
    finally:
        store.close()


def test_an_open_state_is_listed_from_memory_without_reading_the_store(host: Host) -> None:
    p = host.parts
    ids = host.ask("submit", jobs=[{"task": "a"}, {"task": "b", "queue": "q2"}] * 500)["ids"]
    p.store.commit()
    statements: list[str] = []
    p.store.db.set_trace_callback(statements.append)
    page = p.jobs.query("queued", "q2", "b", 3, ids[-1])
    assert [j.id for j in page] == ids[-3:-9:-2] and not statements
    assert [j.id for j in p.jobs.query("queued", None, None, 5, None)] == ids[:-6:-1] and not statements
    p.jobs.query("done", None, None, 5, None)
    assert statements  # (the trace sees the store's reads)


class CountedJobs(dict[int, JobRecord]):
    """JobTable.jobs that counts the entries a reader is handed."""

    read = 0

    def _counted(self, it: Iterator[Any]) -> Iterator[Any]:
        for x in it:
            CountedJobs.read += 1
            yield x

    def __reversed__(self) -> Iterator[int]:
        return self._counted(super().__reversed__())

    def __iter__(self) -> Iterator[int]:
        return self._counted(super().__iter__())

    def items(self) -> Any:
        return self._counted(iter(super().items()))

    def values(self) -> Any:
        return self._counted(iter(super().values()))


def test_a_page_of_a_large_backlog_reads_about_a_page_of_it_not_all(host: Host) -> None:
    p = host.parts
    ids = [i for _ in range(20) for i in host.ask("submit", jobs=[{"task": "a"}] * 1000)["ids"]]
    p.store.commit()
    p.jobs.jobs = CountedJobs(p.jobs.jobs)
    CountedJobs.read = 0
    assert [j.id for j in p.jobs.query("queued", None, None, 20, None)] == ids[:-21:-1]
    assert [j.id for j in p.jobs.query("queued", None, None, 20, ids[-100])] == ids[-101:-121:-1]
    assert CountedJobs.read < 200, CountedJobs.read  # of 20,000
