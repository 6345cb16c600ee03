"""The worker monitor's /proc reading, on this test process and a real process tree, and how tq-host keeps
and shows the figures (tests/parts.py: the host's parts in-process)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import wait_until
from parts import Parts, make_parts
from tq import monitor, protocol

LEASE = 10.0  # host.lease (the default)


def test_the_figures_of_this_process_are_plausible() -> None:
    started = time.monotonic()
    sampler = monitor.Sampler(started - 2.0)
    cpu = time.process_time()
    while time.process_time() - cpu < 0.1:  # busy between the two samples: about 100 %
        pass
    m = sampler.sample(time.monotonic(), 5, 2)
    wall = time.monotonic() - started
    with open("/proc/self/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert 0.5 * vm_rss <= m["rss_bytes"] <= 2 * vm_rss and m["rss_bytes"] > 1 << 20
    r, w = os.pipe()
    try:
        assert monitor.open_fds() == m["fds"] + 2  # the pipe's two ends, and nothing else counted
    finally:
        os.close(r)
        os.close(w)
    expected = 0.1 / (wall + 2.0) * 100  # since the Sampler's first sample, 2 s before `started`
    assert m["cpu_seconds"] >= 0.1 and expected / 2 < m["cpu_percent"] < expected * 2
    assert 2.0 <= m["uptime_seconds"] < 60
    assert (m["jobs_done"], m["jobs_failed"], m["job"]) == (5, 2, None)


def test_a_session_tree_counts_every_process_of_the_session() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & busy=0; while [ $busy -lt 20000 ]; do "
                             "busy=$((busy+1)); done; wait"], start_new_session=True)
    try:
        tree = wait_until(lambda: (t := monitor.session_tree(proc.pid)) and t[0] == 3 and t[2] > 0 and t,
                          what="sh and its two sleeps, with some CPU")
        assert isinstance(tree, tuple)
        _count, rss, cpu = tree
        assert rss > 1 << 20 and cpu < 60
        sampler = monitor.Sampler(time.monotonic())
        job = {"id": 7, "task": "t" * 200, "attempt": 1, "elapsed_seconds": 1.0}
        m = sampler.sample(time.monotonic(), 0, 0, job, proc.pid)
        assert m["job"]["task"] == "t" * monitor.TASK_SHOWN and m["job"]["tree"]["processes"] == 3
        assert m["job"]["tree"]["rss_bytes"] > 1 << 20 and m["job"]["tree"]["cpu_percent"] is not None
        assert len(protocol.encode(protocol.Heartbeat("1", 1, ["default"], 8, 7, m))) < 1024
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    # All gone (their zombies, until pid 1 reaps them, are not counted).
    wait_until(lambda: monitor.session_tree(proc.pid) == (0, 0, 0.0), what="the killed session to be gone")


def test_a_proc_that_cannot_be_read_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_args: object, **_kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", denied)
    monkeypatch.setattr("builtins.open", denied)
    m = monitor.Sampler(time.monotonic()).sample(time.monotonic() + 1, 0, 0, {"id": 1, "attempt": 1}, os.getpid())
    assert (m["rss_bytes"], m["fds"], m["job"]["tree"]) == (None, None, None)
    assert monitor.rss_bytes(os.getpid()) is None and monitor.session_tree(1) is None


# ---- the host's side --------------------------------------------------------------------------------------

@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state")
    yield p
    p.close()


def test_the_host_shows_the_last_heartbeat_with_durations_brought_forward(parts: Parts) -> None:
    parts.start_worker("1", now=0.0)
    assert parts.fleet.workers["1"].public(0.0, LEASE)["monitor"] is None  # nothing heard yet (or an old worker)
    job = {"id": 9, "task": "t", "attempt": 1, "elapsed_seconds": 2.0}
    figures = {"rss_bytes": 30 << 20, "cpu_seconds": 1.0, "cpu_percent": 4.0, "fds": 8, "uptime_seconds": 100.0,
               "jobs_done": 3, "jobs_failed": 1, "job": job}
    parts.worker_says(protocol.Heartbeat("1", 100, ["default"], 8, 9, figures), now=10.0)
    m = parts.fleet.workers["1"].public(12.5, LEASE)["monitor"]
    assert m["sampled_ago"] == 2.5 and m["uptime_seconds"] == 102.5 and m["job"]["elapsed_seconds"] == 4.5
    assert (m["rss_bytes"], m["cpu_seconds"], m["fds"], m["jobs_done"], m["jobs_failed"]) == (30 << 20, 1.0, 8, 3, 1)
    parts.worker_says(protocol.Heartbeat("1", 100, ["default"], 8, 0, figures), now=13.0)  # 9 ended meanwhile
    assert parts.fleet.workers["1"].public(13.0, LEASE)["monitor"]["job"] is None
    parts.worker_says(protocol.Heartbeat("1", 100, ["default"], 8, 9, figures | {"uptime_seconds": "x"}), 14.0)
    assert parts.fleet.workers["1"].public(15.0, LEASE)["monitor"]["uptime_seconds"] == "x"  # odd input, no crash
    parts.fleet.check_leases(100.0)  # silent past the lease: lost; its figures stay as last heard, no job
    lost = parts.fleet.workers["1"].public(101.0, LEASE)
    assert lost["state"] == "lost" and lost["monitor"]["job"] is None and lost["monitor"]["sampled_ago"] == 87.0


def test_a_heartbeat_older_than_the_lease_is_shown_as_it_was_and_seen_is_the_time_since_the_last_message(
        parts: Parts) -> None:
    parts.start_worker("1", now=0.0)
    job = {"id": 9, "task": "t", "attempt": 1, "elapsed_seconds": 25.0}
    parts.worker_says(protocol.Heartbeat("1", 100, ["default"], 8, 9, {"uptime_seconds": 100.0, "job": job}), 10.0)
    w = parts.fleet.workers["1"]
    w.seen = 70.0  # the lease started again without a word from it (tq-host's broker link was down: brokerwatch)
    shown = w.public(70.0, LEASE)
    m = shown["monitor"]
    assert shown["seen_ago"] == 60.0 and m["stale"] and m["sampled_ago"] == 60.0
    assert m["job"]["elapsed_seconds"] == 25.0 and m["uptime_seconds"] == 100.0  # as last heard, not 85 s
    fresh = w.public(15.0, LEASE)["monitor"]
    assert not fresh["stale"] and fresh["job"]["elapsed_seconds"] == 30.0


def test_a_heartbeat_without_the_monitor_keeps_the_lease(parts: Parts) -> None:
    parts.start_worker("1", now=0.0)
    parts.mq.send(b'\x02B["1",100,["default"],8,0]', 0)  # a worker of the previous release
    parts.fleet.intake(2.0)
    w = parts.fleet.workers["1"]
    assert w.state == "live" and w.seen == 2.0 and w.public(2.0, LEASE)["monitor"] is None
    assert parts.fleet.malformed.total == 0
