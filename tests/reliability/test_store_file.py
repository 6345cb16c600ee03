"""The store's file removed or replaced under a running tq-host (the tester's §3): tq-host writes the store it still
holds back to its path, and the next start finds every acknowledged job; what was put in its place is kept aside."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import Suite, wait_until
from tq.client import TqError

RESCUED = "was removed or replaced while tq-host ran"


def remove_store(state: Path) -> None:
    for name in ("tq.sqlite3", "tq.sqlite3-wal", "tq.sqlite3-shm"):
        (state / name).unlink(missing_ok=True)


def restart_and_find(suite: Suite, acked: list[int]) -> None:
    """Stop tq-host (SIGTERM), start it again, and find every acknowledged job."""
    for d in suite.daemons:
        if d.name == "host" and d.proc.poll() is None:
            d.signal(signal.SIGTERM)
            assert d.wait() == 0
    suite.host()
    c = suite.client()
    found = {jid: c.get(jid)["args"] for jid in acked}
    assert sorted(found) == sorted(acked)
    assert c.submit("task-1", "next") == max(acked) + 1  # ids go on, they do not start again at 1


def test_a_removed_store_is_written_back_while_tq_host_runs(suite: Suite) -> None:
    host = suite.host()
    c = suite.client()
    state = suite.dir / "state"
    acked = c.submit_many([("task-1", [f"before-{i}"]) for i in range(20)])
    remove_store(state)
    acked.append(c.submit("task-1", "while-gone"))
    acked.append(c.submit("task-1", "delayed", delay=3600))
    wait_until(lambda: RESCUED in host.text(), timeout=10, what="tq-host to notice its store is gone")
    assert (state / "tq.sqlite3").exists()
    assert "CRITICAL" in host.text() or "critical" in host.text()
    acked.append(c.submit("task-1", "after"))
    restart_and_find(suite, acked)


def test_a_store_removed_just_before_a_stop_is_written_back_at_the_stop(suite: Suite) -> None:
    suite.host()
    c = suite.client()
    acked = [c.submit("task-1", str(i)) for i in range(5)]
    remove_store(suite.dir / "state")
    acked.append(c.submit("task-1", "last"))
    restart_and_find(suite, acked)


def test_a_replaced_store_is_kept_aside_and_the_live_one_written_back(suite: Suite) -> None:
    host = suite.host()
    c = suite.client()
    state = suite.dir / "state"
    acked = [c.submit("task-1", str(i)) for i in range(5)]
    stranger = state / "other.sqlite3"
    db = sqlite3.connect(stranger)
    db.execute("CREATE TABLE t (x)")
    db.close()
    remove_store(state)
    stranger.rename(state / "tq.sqlite3")
    acked.append(c.submit("task-1", "after"))
    wait_until(lambda: RESCUED in host.text(), timeout=10, what="tq-host to notice its store was replaced")
    aside = [p for p in state.iterdir() if p.name.startswith("tq.sqlite3.replaced-")]
    assert aside, sorted(p.name for p in state.iterdir())
    db = sqlite3.connect(aside[0])
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    db.close()
    restart_and_find(suite, acked)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the state dir is a 2 MiB tmpfs mounted for it")


@contextmanager
def small_state_dir(suite: Suite) -> Iterator[Path]:
    """host.state_dir on a tmpfs of its own (2 MiB), unmounted at the end (its daemons stopped first)."""
    state = suite.dir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        for d in suite.daemons:
            d.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(path: Path) -> None:
    """Take every free block of the file system `path` is made on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


@needs_root
def test_a_full_disk_logs_a_failed_commit_once_and_claims_no_job(suite: Suite) -> None:
    """The tester's §12: each refused submit logged `job N submitted` for a job never committed, and each failed
    commit a `fenced` event saying "tq-host restarted"."""
    with small_state_dir(suite) as state:
        host, _ = suite.start(workers=1)
        c = suite.client()
        acked = [c.submit("task-1", "before")]
        filler = state / "filler"
        fill(filler)
        refused = 0
        for i in range(3000):  # the WAL may have room for a while
            try:
                acked.append(c.submit("task-1", "x" * 4000, str(i)))
            except TqError as e:
                assert "disk is full" in str(e)
                refused += 1
                if refused == 20:
                    break
        assert refused == 20
        filler.unlink()
        acked.append(c.submit("task-1", "after"))
        for jid in acked:
            assert c.wait(jid, timeout=30)["state"] == "done"
        events = c.events(limit=1000)
        assert not [e for e in events if "restarted" in str(e.get("detail", ""))], events
        host.signal(signal.SIGTERM)
        assert host.wait() == 0
        submitted = re.findall(r"job (\d+) submitted", host.text())
        assert len(submitted) == len(set(submitted)), "a job was logged as submitted more than once"
        assert sorted(map(int, submitted)) == sorted(acked)  # and none that was not acknowledged
        assert host.text().count("store write failed: store") <= 2  # once a burst (5 s), not once a failed commit
        assert "lost with it" not in host.text() and "is live" not in host.text().split(" assigned [", 1)[1]
        suite.host()
        c = suite.client()
        assert all(c.get(jid)["state"] == "done" for jid in acked)


@needs_root
def test_a_full_disk_with_a_schedule_due_retries_it_once_a_second_and_says_nothing_false(suite: Suite) -> None:
    """Trial E's finding 5: each failed commit reloaded the schedules as at a start, so the due run was "missed
    while tq-host was down", logged, and tried again at once: ~700 lines a second, a core busy. And a refused
    pause was logged as done."""
    suite.write_config('\n[schedules.tick]\nevery = "1s"\ntask = "task-1"\noverlap = true\n')
    with small_state_dir(suite) as state:
        host = suite.host()
        c = suite.client()
        filler = state / "filler"
        fill(filler)
        with contextlib.suppress(TqError):
            for i in range(3000):  # the WAL may have room for a while
                c.submit("task-1", "x" * 4000, str(i))
        failed = c.metrics()["commits"]["errors"]
        wait_until(lambda: c.metrics()["commits"]["errors"] >= failed + 3, timeout=15, what="three failed runs")
        r = suite.tqctl("pause", "default")
        assert r.returncode == 3 and "store write failed" in r.stderr, r
        assert c.metrics()["commits"]["errors"] <= failed + 12  # the schedule's run: tried once a second
        text = host.text()
        assert "missed while tq-host was down" not in text and "schedule tick" not in text, text[-2000:]
        assert "queue default paused" not in text  # (it was not)
        assert text.count("store write failed: store") <= 2
        filler.unlink()
        wait_until(lambda: [j for j in c.list_jobs(task="task-1", limit=5000) if j["payload"]], timeout=15,
                   what="the schedule's runs again")
        assert suite.tqctl("pause", "default").returncode == 0
        wait_until(lambda: host.text().count("queue default paused") == 1, what="the pause's line")
        assert json.loads(suite.tqctl("status", "--json").stdout)["paused"] == ["default"]


@needs_root
def test_a_store_that_cannot_be_written_back_refuses_changes_until_it_can(suite: Suite) -> None:
    """No room for the copy (the removed file still takes its blocks while tq-host holds it): submits are refused
    as unavailable, not acknowledged into a file that is gone; once there is room, the store is written back."""
    with small_state_dir(suite) as state:
        host = suite.host()
        c = suite.client()
        acked = c.submit_many([("task-1", ["y" * 2000]) for _ in range(100)])
        filler = state / "filler"
        fill(filler)
        remove_store(state)
        wait_until(lambda: "writing it back failed" in host.text(), timeout=10, what="a failed write-back")
        r = suite.tqctl("submit", "task-1")
        assert r.returncode == 3 and "writing it back failed" in r.stderr, r
        host.notify.wait_for(lambda m: m.startswith("STATUS=") and "writing it back failed" in m)
        filler.unlink()
        wait_until(lambda: RESCUED + ": wrote" in host.text(), timeout=10, what="the write-back")
        acked.append(c.submit("task-1", "after"))
        restart_and_find(suite, acked)
