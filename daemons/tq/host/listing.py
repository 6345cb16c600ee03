"""Pages of jobs, newest first (`tqctl list`, bulk cancel and retry): each state's page read where it is cheap.

The store has no index on state (records.py says why). An open state's page comes from tq-host's memory
(JobTable.jobs); dead and cancelled from the table resting, (state, id) of each job resting in them; done (most
of the store) and no state by walking the primary key down from `after`. A page costs its own rows, whatever
the store holds: with 1,000,000 done jobs, 20 of 100 dead read in under a millisecond, not 20-110 ms.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Callable

from ..states import FINAL, JobState
from .records import COLUMNS, MAX_JOB_ID, RESTING, JobRecord, record

OPEN = frozenset(s.value for s in JobState) - FINAL  # the states of the jobs tq-host keeps in memory
StoredPage = Callable[[str | None, str | None, str | None, int, int | None], list[JobRecord]]  # Store.query
_SELECT = f"SELECT {','.join(f'jobs.{c}' for c in COLUMNS)} FROM "  # (jobs. : the same in a join with resting)


def page(jobs: dict[int, JobRecord], retried: set[int], stored: StoredPage, state: str | None, queue: str | None,
         task: str | None, limit: int, after: int | None) -> list[JobRecord]:
    """JobTable.query: an open state from `jobs` (open_page), any other from the store (`stored`: Store.query,
    stored_page), each job as `jobs` has it now."""
    if state in OPEN:
        return open_page(jobs, retried, state, queue, task, limit, after or MAX_JOB_ID + 1)
    return [jobs.get(j.id) or j for j in stored(state, queue, task, limit, after)]


def open_page(jobs: dict[int, JobRecord], retried: set[int], state: str, queue: str | None, task: str | None,
              limit: int, top: int) -> list[JobRecord]:
    """Up to `limit` open jobs in `state` with ids below `top`, newest first. `jobs` read backwards is newest
    first but for the ids in `retried` (put back out of order), taken apart: the walk stops at `limit` matches.
    Of 100,000 queued jobs the first page reads 20; one 50,000 deep skips the newer in C (3 ms). heapq.nlargest
    over all of them took 13-20 ms of tq-host's loop."""
    def matches(j: JobRecord) -> bool:
        return j.state == state and j.id < top and (not queue or j.queue == queue) and (not task or j.task == task)

    found: list[int] = []
    for job_id in itertools.dropwhile(top.__le__, reversed(jobs)):
        if len(found) >= limit:
            break
        if job_id not in retried and matches(jobs[job_id]):
            found.append(job_id)
    found += [i for i in retried if i in jobs and matches(jobs[i])]
    return [jobs[i] for i in heapq.nlargest(limit, found)]


def stored_page(db: sqlite3.Connection, state: str | None, queue: str | None, task: str | None, limit: int,
                after: int | None) -> list[JobRecord]:
    """Up to `limit` jobs of the store that match, newest first; `after`: only ids below it (the next page).

    A resting state (dead, cancelled) is read down its rows in the table resting: a page costs its own rows
    (and those that match state but not queue or task). Any other is read down the primary key from `after`: a
    page deep in the store costs the rows from there to its last one, not those before it; with a filter that
    few jobs match, the rows between them too."""
    where: list[str] = []
    params: list[object] = []
    source, key = "jobs", "jobs.id"
    if state in RESTING:  # (CROSS JOIN: resting is the outer loop, read down its (state, id) key)
        source, key = "resting CROSS JOIN jobs ON jobs.id = resting.id", "resting.id"
        where.append("resting.state=?")
        params.append(state)
        state = None
    for column, value in (("jobs.state", state), ("jobs.queue", queue), ("jobs.task", task), (key, after)):
        if value:
            where.append(f"{column}<?" if column == key else f"{column}=?")
            params.append(value)
    sql = _SELECT + source
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {key} DESC LIMIT ?"
    return [record(r) for r in db.execute(sql, (*params, limit))]
