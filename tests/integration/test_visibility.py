"""The event stream and the metrics, on a real tq-host and workers (issue 13)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Suite, as_from_a_terminal, wait_until
from tq import metrics
from tq.client import Client, Refused

FAILING = '\n[tasks.boom]\ncommand = ["sh", "-c", "exit 3"]\nretries = 1\nbackoff = "10ms"\n'


def read_events(feed: Client, stream: Any, until: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Events from a subscription until `until(events)` holds (the socket is awaited, never slept on)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([feed.fileno()], [], [], left)[0], f"timed out; got {events[-20:]}"
        events += [json.loads(line) for line in next(stream).splitlines()]
    return events


def test_a_subscriber_sees_each_jobs_events_in_order_and_only_those_its_filters_match(suite: Suite) -> None:
    suite.write_config(FAILING)
    suite.start(workers=1)
    c = suite.client()
    with Client(socket_path=c.socket_path) as everything, Client(socket_path=c.socket_path) as booms:
        all_events = everything.subscribe()
        boom_events = booms.subscribe(task="boom")
        ok = c.submit("task-1", "x")
        bad = c.submit("boom")
        c.wait(ok, timeout=15)
        c.wait(bad, timeout=15)
        got = read_events(everything, all_events, lambda ev: any(e.get("event") == "dead" for e in ev))
        boom = read_events(booms, boom_events, lambda ev: any(e.get("event") == "dead" for e in ev))
    # Jobs that end within 5 ms go from assigned to their outcome; a longer one (a loaded machine) is "started"
    # between: that one event may come or not.
    mine = [(e["job"], e["event"]) for e in got if e.get("job") in (ok, bad) and e["event"] != "started"]
    assert [x for x in mine if x[0] == ok] == [(ok, "submitted"), (ok, "assigned"), (ok, "done")]
    assert [x for x in mine if x[0] == bad] == [(bad, "submitted"), (bad, "assigned"), (bad, "failed"),
                                                (bad, "retrying"), (bad, "assigned"), (bad, "dead")]
    done = next(e for e in got if e.get("job") == ok and e["event"] == "done")
    assert done["task"] == "task-1" and done["queue"] == "default" and done["worker"] == "1" and done["attempt"] == 1
    assert {e["job"] for e in boom} == {bad} and [e["event"] for e in boom][-1] == "dead"
    # Without --follow: the same events, from the host's recent ones.
    r = suite.tqctl("events", "--job", str(bad), "--json")
    assert [e for e in (json.loads(line)["event"] for line in r.stdout.splitlines()) if e != "started"] == [
        e for _, e in mine if _ == bad]
    r = suite.tqctl("events", "--job", str(ok))
    assert r.returncode == 0 and f"job {ok} done  task=task-1 queue=default attempt=1 worker=1" in r.stdout


def test_a_job_handed_back_by_a_stopping_worker_is_released_from_the_attempt_it_was_on(suite: Suite) -> None:
    suite.write_config('\n[worker.1]\nstop_timeout = "0.2s"\n[tasks.slow]\ncommand = ["sleep", "30"]\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    with Client(socket_path=c.socket_path) as feed:
        stream = feed.subscribe(task="slow")
        jid = c.submit("slow")
        read_events(feed, stream, lambda ev: any(e["event"] == "started" for e in ev))
        w1.signal(signal.SIGTERM)  # past stop_timeout the attempt is interrupted and the job handed back
        got = read_events(feed, stream, lambda ev: any(e["event"] == "released" for e in ev))
    assert w1.wait() == 0
    released = next(e for e in got if e["event"] == "released")
    assert (released["job"], released["attempt"], released["worker"]) == (jid, 1, "1"), released
    assert c.get(jid)["attempts"] == 0  # the attempt handed back does not count
    r = suite.tqctl("events", "--job", str(jid))
    assert f"job {jid} released  task=slow queue=default attempt=1 worker=1: handed back" in r.stdout, r.stdout


def test_worker_events_up_fenced_lost(suite: Suite) -> None:
    suite.write_config("", lease="1s")
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    with Client(socket_path=c.socket_path) as feed:
        stream = feed.subscribe(queue="default")
        w1.signal(signal.SIGSTOP)  # silent past the lease
        try:
            got = read_events(feed, stream, lambda ev: any(e["event"] == "lost" for e in ev))
        finally:
            w1.signal(signal.SIGCONT)
        got += read_events(feed, stream, lambda ev: any(e["event"] == "up" for e in ev))
    lost = next(e for e in got if e["event"] == "lost")
    assert lost["worker"] == "1" and lost["queues"] == ["default"] and "host.lease" in lost["detail"]
    names = [e["event"] for e in got]
    assert names.index("lost") < names.index("fenced") < names.index("up")  # back: fenced, then live again


def test_a_slow_subscriber_gets_a_counted_gap_and_the_host_goes_on(suite: Suite) -> None:
    """A subscriber that reads nothing: the host keeps at most a socket's worth and one batch for it, counts the
    rest, and tells the count when it reads again; meanwhile one that follows a task of its own misses nothing."""
    suite.start(workers=2)
    c = suite.client()
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(c.socket_path)
    slow.sendall(b'{"op":"subscribe","rid":1}\n')
    with Client(socket_path=c.socket_path) as fast:
        stream = fast.subscribe(task="watched")
        ids, watched = [], []
        for i in range(20):  # bursts of 300 jobs, a watched job in each
            ids += c.submit_many([("task-1", [str(i)]) for i in range(300)])
            watched.append(c.submit("watched", str(i)))
        assert len(c.wait_many(ids + watched, timeout=120)) == 6020  # the host did not wait for the slow reader
        got = read_events(fast, stream, lambda ev: sum(e.get("event") == "done" for e in ev) >= 20)
    assert not any("missed" in e for e in got)
    assert [e["job"] for e in got if e["event"] == "done"] == watched
    each = ("submitted", "assigned", "done")
    assert sorted((e["job"], e["event"]) for e in got) == sorted((j, x) for j in watched for x in each)
    data = b""
    while not re.search(rb'\{"missed":\d+\}\n', data):  # now read: events, then where the gap is, the count
        assert select.select([slow], [], [], 10)[0], f"no gap told; read {data[-300:]!r}"
        chunk = slow.recv(1 << 20)
        assert chunk
        data += chunk
    slow.close()
    lines = [json.loads(line) for line in data.split(b"\n")[1:-1]]  # after the subscribe reply, whole lines
    missed = next(e["missed"] for e in lines if "missed" in e)
    received = sum("event" in e for e in lines)
    assert missed > 0 and received + missed <= 3 * 6000 + 100


def test_bad_filters_are_refused_with_exit_2_and_a_host_that_is_not_there_with_3(suite: Suite) -> None:
    suite.start(workers=0)
    r = suite.tqctl("events", "--queue", "no such queue")
    assert r.returncode == 2 and "invalid queue name" in r.stderr and len(r.stderr.splitlines()) == 1
    suite.close()
    r = suite.tqctl("events", "--follow")
    assert r.returncode == 3 and "not reachable" in r.stderr


def test_tqctl_events_follow_prints_events_as_they_happen_and_follows_again_after_a_host_restart(
        suite: Suite) -> None:
    host, _workers = suite.start(workers=1)
    c = suite.client()
    argv = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "events", "--follow", "--task", "task-1"]
    follower = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=suite.env,
                                preexec_fn=as_from_a_terminal)
    assert follower.stdout is not None and follower.stderr is not None

    def follow_until(text: str, stream: Any) -> str:
        out = b""
        while text.encode() not in out:
            assert select.select([stream], [], [], 15)[0], out
            out += os.read(stream.fileno(), 65536)
        return out.decode()

    try:
        wait_until(lambda: c.metrics()["events"]["subscribers"] == 1, what="tqctl subscribed")
        jid = c.submit("task-1", "follow-me")
        lines = follow_until(f"job {jid} done", follower.stdout).splitlines()
        assert [line.split("  ")[1] for line in lines[-3:]] == [f"job {jid} submitted", f"job {jid} assigned",
                                                                 f"job {jid} done"]
        assert f"tq-host: info: job {jid} assigned [" in host.text()  # the journal's words are the events'
        host.signal(signal.SIGTERM)
        host.wait()
        assert "following again once it is back" in follow_until("once it is back", follower.stderr)
        suite.host()
        c = suite.client()
        wait_until(lambda: c.metrics()["events"]["subscribers"] == 1, timeout=15, what="tqctl subscribed again")
        jid = c.submit("task-1", "after-restart")
        assert f"job {jid} submitted" in follow_until(f"job {jid} submitted", follower.stdout)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert follower.returncode == 130


def test_metrics_parse_and_count_what_happened(suite: Suite) -> None:
    suite.write_config(FAILING + '\n[schedules.weekly]\ncron = "@weekly"\ntask = "task-1"\n')
    suite.start(workers=1)
    c = suite.client()
    ids = [c.submit("task-1", str(i)) for i in range(5)] + [c.submit("boom")]
    c.wait_many(ids, timeout=30)
    r = suite.tqctl("metrics")
    assert r.returncode == 0, r.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.stdout) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("tq_up") == 1
    assert value("tq_jobs_finished_total", queue="default", task="task-1", state="done") == 5
    assert value("tq_jobs_finished_total", queue="default", task="boom", state="dead") == 1
    assert value("tq_job_attempts_failed_total", queue="default", task="boom") == 2
    assert value("tq_job_retries_total", queue="default", task="boom") == 1
    assert value("tq_jobs_submitted_total", queue="default", task="task-1") == 5
    assert value("tq_jobs", state="dead") == 1
    assert value("tq_job_duration_seconds_count", task="task-1") == 5
    assert value("tq_job_duration_seconds_bucket", task="boom", le="+Inf") == 2
    assert value("tq_workers", state="live", transport="posix") == 1
    assert value("tq_queue_jobs", queue="default", state="queued") == 0
    assert value("tq_store_size_bytes") > 0
    assert value("tq_store_commit_duration_seconds_count") > 0
    assert value("tq_worker_open_fds", worker="1") > 0
    assert value("tq_schedule_next_run_timestamp_seconds", schedule="weekly") > time.time()
    assert value("tq_schedule_last_run_failed", schedule="weekly") == 0
    assert ("tq_schedule_last_run_timestamp_seconds", (("schedule", "weekly"),)) not in samples  # (none yet)


def test_the_host_writes_the_metrics_text_and_tqctl_metrics_does_not_load_the_client_library(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    c.wait(c.submit("task-1"), timeout=30)
    # tqctl in a process where the Prometheus client library cannot be imported: the text still comes, whole.
    code = ("import sys; sys.modules['prometheus_client'] = None; from tq.ctl import main; "
            f"sys.exit(main(['--config', {str(suite.config)!r}, 'metrics']))")
    r = subprocess.run([sys.executable, "-c", code], env=suite.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    assert families["tq_up"].samples[0].value == 1
    done = [x for x in families["tq_jobs_finished"].samples if x.labels.get("state") == "done"]  # (name sans _total)
    assert [x.value for x in done] == [1]
    # The same families as tqctl wrote from the snapshot until now (tq.metrics.render, here in the test).
    assert set(families) == {f.name for f in text_string_to_metric_families(metrics.render(c.metrics()).decode())}
    with pytest.raises(Refused, match="format must be json or text"):
        c.call("metrics", format="xml")


def test_metrics_output_is_replaced_atomically_and_says_down_when_the_host_is(suite: Suite) -> None:
    suite.start(workers=0)
    path = suite.dir / "textfile" / "tq.prom"
    path.parent.mkdir()
    r = suite.tqctl("metrics", "--output", str(path))
    assert r.returncode == 0 and r.stdout == ""
    assert os.stat(path).st_mode & 0o777 == 0o644 and os.listdir(path.parent) == ["tq.prom"]
    first = os.stat(path).st_ino
    assert any(f.name == "tq_up" for f in text_string_to_metric_families(path.read_text()))
    suite.close()
    r = suite.tqctl("metrics", "--output", str(path))
    assert r.returncode == 3 and "not reachable" in r.stderr
    assert os.stat(path).st_ino != first  # replaced, not rewritten in place
    assert "tq_up 0.0" in path.read_text() and os.listdir(path.parent) == ["tq.prom"]
    r = suite.tqctl("metrics", "--output", "/nonexistent/dir/tq.prom")
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("tqctl: cannot write /nonexistent/dir/tq.prom")


def test_tqctl_watch_prints_a_line_when_events_come_and_none_while_idle(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    argv = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "watch", "--interval", "0.2s"]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, env=suite.env, preexec_fn=as_from_a_terminal)
    assert watcher.stdout is not None
    fd = watcher.stdout.fileno()

    def lines_within(seconds: float, until: str | None = None) -> list[str]:
        """What watch prints within `seconds`, or until a whole line holds `until` (with PYTHONUNBUFFERED set,
        print writes a line and its newline in two writes: a read may end between them)."""
        out = b""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
            if until is not None and until in out.decode() and out.endswith(b"\n"):
                break
        return out.decode().splitlines()

    try:
        first = lines_within(10, until="\n")
        assert len(first) == 1 and "done 0" in first[0] and "workers 1" in first[0]
        wait_until(lambda: c.metrics()["events"]["subscribers"] == 1, what="watch subscribed")
        c.wait(c.submit("task-1"), timeout=15)
        assert "done 1" in lines_within(10, until="done 1")[-1]
        assert lines_within(1.5) == []  # nothing happens, nothing printed: it waits for events
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(10)
    assert watcher.returncode == 130  # interrupted, as documented


def test_metrics_output_refuses_a_target_that_is_no_regular_file_and_an_empty_name(suite: Suite) -> None:
    suite.host()
    real = suite.dir / "real.prom"
    real.write_text("kept\n")
    fifo, link, directory = suite.dir / "fifo.prom", suite.dir / "link.prom", suite.dir / "dir.prom"
    os.mkfifo(fifo)
    link.symlink_to(real)
    directory.mkdir()
    for path, words in ((fifo, ["not a regular file (a FIFO)"]), (directory, ["not a regular file (a directory)"]),
                        (link, ["a symbolic link", f"points to: {real}"])):
        r = suite.tqctl("metrics", "--output", str(path))
        assert (r.returncode, r.stdout, r.stderr.count("\n")) == (2, "", 1), r
        assert r.stderr.startswith(f"tqctl: cannot write {path}: ") and all(w in r.stderr for w in words), r.stderr
    assert fifo.is_fifo() and link.is_symlink() and directory.is_dir() and real.read_text() == "kept\n"
    r = suite.tqctl("metrics", "--output", "")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "tqctl: --output needs a file name (without --output the "
                                                        "metrics are printed)\n")


def test_list_and_show_escape_control_characters_and_a_failure_is_one_line(suite: Suite) -> None:
    """A submitter's text cannot act on the admin's terminal: ESC, BEL, NUL, CR shown as escapes (not in --json);
    a job's error of many lines is one line in list, submit --wait and result, its lines kept by show."""
    suite.write_config('\n[tasks.fail]\ncommand = ["sh", "-c", "printf \'first\\\\nsecond\\\\033[31m\' >&2; exit 1"]\n'
                       'retries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    done = c.submit("echo", "\x00\r\x1b]0;title\x07ünï")
    c.wait(done, timeout=15)
    r = suite.tqctl("submit", "--wait", "fail")
    assert r.returncode == 1 and r.stderr.endswith("first\\nsecond\\x1b[31m\n") and r.stderr.count("\n") == 1, r
    failed = c.list_jobs(task="fail")[0]["id"]
    r = suite.tqctl("result", str(failed), str(done))
    assert r.stderr == f"tqctl: job {failed} dead: exit status 1: first\\nsecond\\x1b[31m\n", r
    listing = suite.tqctl("list").stdout
    assert "\x1b" not in listing and "\x07" not in listing and "\r" not in listing, repr(listing)
    assert "\\x00\\r\\x1b]0;title\\x07ünï" in listing and "first\\nsecond\\x1b[31m" in listing, listing
    shown = suite.tqctl("show", str(failed)).stdout
    assert "error:       exit status 1: first\nsecond\\x1b[31m\n" in shown and "\x1b" not in shown, repr(shown)
    assert json.loads(suite.tqctl("show", "--json", str(done)).stdout)["args"] == ["\x00\r\x1b]0;title\x07ünï"]
