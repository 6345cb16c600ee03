"""Exhaustion: a full disk under state_dir, no descriptors left, full kernel queues.
Each time the host stays up, nothing acknowledged is lost, and service resumes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import posix_ipc
import pytest

from harness import Suite, wait_until
from tq.client import Client, HostUnreachable, TqError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, prlimit)")


@needs_root
def test_full_disk_refuses_submits_clearly_and_resumes(suite: Suite) -> None:
    state = suite.dir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], check=True)
    try:
        suite.start(workers=1)
        c = suite.client()
        acked = [c.submit("task-1", "before")]
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # eat the free space
            while os.write(fd, b"\0" * 65536):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        refusal = ""
        for i in range(5000):  # the WAL may still have room for a while
            try:
                acked.append(c.submit("task-1", "x" * 4000, str(i)))
            except TqError as e:
                refusal = str(e)
                break
        assert "database or disk is full" in refusal
        r = suite.tqctl("submit", "task-1")
        assert r.returncode == 3 and "disk is full" in r.stderr
        with pytest.raises(TqError, match="disk is full"):
            c.submit_and_wait("task-1", "refused", wait_timeout=0)  # its wait would time out in the same step
        assert c.status()["version"]  # the host is up, and this is the answer to status, not a stray timeout
        filler.unlink()
        acked.append(c.submit("task-1", "after"))
        for jid in acked:
            assert c.wait(jid, timeout=30)["state"] == "done"
    finally:
        for d in suite.daemons:
            d.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)


@needs_root
def test_out_of_descriptors_refuses_new_clients_clearly_and_recovers(suite: Suite) -> None:
    host, _ = suite.start(workers=1)
    held = [suite.client() for _ in range(3)]
    for c in held:
        c.status()
    open_fds = len(os.listdir(f"/proc/{host.pid}/fd"))
    subprocess.run(["prlimit", f"--pid={host.pid}", f"--nofile={open_fds}:{open_fds + 100}"], check=True)
    with pytest.raises(HostUnreachable, match=r"out of resources.*Too many open files"):
        Client(config=str(suite.config)).status()
    for c in held:  # the connections it has are still served
        assert c.status()["states"]
    held.pop().close()
    subprocess.run(["prlimit", f"--pid={host.pid}", f"--nofile={open_fds + 100}:{open_fds + 100}"], check=True)
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")
    assert host.proc.poll() is None


def test_host_queue_full_while_the_host_is_stopped_loses_nothing(suite: Suite) -> None:
    host, _ = suite.start(workers=2)
    c = suite.client()
    ids = c.submit_many([("task-1", [str(i)]) for i in range(40)])
    host.signal(signal.SIGSTOP)  # results pile up in the 4-deep host queue; workers hold the rest
    q = posix_ipc.MessageQueue(f"{suite.prefix}.host")
    try:
        wait_until(lambda: q.current_messages == q.max_messages, what="the host queue to fill")
    finally:
        q.close()
        host.signal(signal.SIGCONT)
    jobs = [c.wait(jid, timeout=30) for jid in ids]
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)


def test_full_worker_inbox_gives_the_job_back_for_another_worker(suite: Suite) -> None:
    suite.write_config("", lease="30s")
    _host, (w1, _w2) = suite.start(workers=2)
    w1.signal(signal.SIGSTOP)
    inbox = posix_ipc.MessageQueue(f"{suite.prefix}.w.1")
    try:
        while inbox.current_messages < inbox.max_messages:
            inbox.send(b"garbage to fill the queue")
        c = suite.client()
        jobs = [c.wait(c.submit("task-1", str(i)), timeout=10) for i in range(6)]
        assert all(j["worker"] == "2" and j["attempts"] == 1 for j in jobs)  # taken back, not counted
    finally:
        inbox.close()
        w1.signal(signal.SIGCONT)


def test_kill_everything_at_once_right_after_submits_return(suite: Suite) -> None:
    """Power loss as far as processes go: every tq process gets SIGKILL the moment submits return."""
    suite.write_config("", host='durability = "full"')
    host, workers = suite.start(workers=2)
    c = suite.client()
    acked = c.submit_many([("task-1", [str(i)]) for i in range(500)])
    acked += [c.submit("task-1", "single", str(i)) for i in range(100)]
    for d in (host, *workers):
        d.signal(signal.SIGKILL)
    for d in (host, *workers):
        d.wait()
    suite.host()
    suite.worker("1")
    suite.worker("2")
    c = suite.client()
    assert all(c.wait(jid, timeout=30)["state"] == "done" for jid in acked)


def test_submit_is_fsynced_before_it_is_acknowledged(suite: Suite, tmp_path: Path) -> None:
    """With durability = full, the reply to a submit follows an fsync of the store's WAL (strace shows it)."""
    suite.write_config("", host='durability = "full"')
    host = suite.host()
    c = suite.client()
    c.submit("task-1", "warm-up")
    trace = tmp_path / "trace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-s", "256", "-e",
                               "trace=fsync,fdatasync,sendto,write,recvfrom", "-o", str(trace), "-p", str(host.pid)])
    try:
        wait_until(trace.exists, what="strace to start")
        jid = 0
        for _ in range(50):  # strace attaches asynchronously: submit until the trace shows a reply
            jid = c.submit("task-1", "traced")
            if f'"ids":[{jid}]' in trace.read_text().replace("\\", ""):  # strace escapes quotes
                break
    finally:
        tracer.terminate()
        tracer.wait()
    lines = trace.read_text().replace("\\", "").splitlines()
    reply = next(i for i, line in enumerate(lines) if f'"ids":[{jid}]' in line)
    request = max(i for i, line in enumerate(lines[:reply]) if '"op":"submit"' in line)
    assert any("fsync(" in line or "fdatasync(" in line for line in lines[request:reply])


def test_only_commits_that_acknowledge_something_are_fsynced(suite: Suite, tmp_path: Path) -> None:
    """durability = full: a submit's reply and a wait's answer follow an fsync; the dispatch and the result of
    a job that no one waits for are committed without one (they ride on the next fsync)."""
    suite.write_config("", host='durability = "full"')
    host = suite.host()
    suite.worker("1")
    suite.wait_live(1)
    c = suite.client()
    trace = tmp_path / "trace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-s", "256", "-e",
                               "trace=fsync,fdatasync,sendto,recvfrom", "-o", str(trace), "-p", str(host.pid)])
    try:
        wait_until(trace.exists, what="strace to start")
        for _ in range(50):  # strace attaches asynchronously: submit until the trace shows a reply
            jid = c.submit("task-1", "warm-up")
            if f'"ids":[{jid}]' in trace.read_text().replace("\\", ""):
                break
        ids = [c.submit("task-1", str(i), delay=0.3) for i in range(20)]  # they run once all are submitted
        # status tells no job's outcome (a get would: it is an acknowledgement, fsync'd first)
        open_states = ("queued", "delayed", "assigned", "running")
        wait_until(lambda: not any(c.status()["states"][state] for state in open_states),
                   what="the delayed jobs to run")
        c.wait(ids[-1], timeout=10)
        c.get(ids[0])
    finally:
        tracer.terminate()
        tracer.wait()
    lines = trace.read_text().replace("\\", "").splitlines()

    def at(text: str, after: int = 0) -> int:
        return next(i for i in range(after, len(lines)) if text in lines[i])

    def fsyncs(start: int, end: int) -> int:
        return sum("fsync(" in line or "fdatasync(" in line for line in lines[start:end])

    first_submit = at('"args":["0"]')
    last_reply = at(f'"ids":[{ids[-1]}]')
    wait_request = at('"op":"wait"', last_reply)
    wait_reply = at(f'"job":{{"id":{ids[-1]}', wait_request)
    assert fsyncs(first_submit, last_reply) == 20  # one per acknowledged submit
    assert fsyncs(last_reply, wait_request) == 0  # 20 dispatches and 20 results: none acknowledged
    assert fsyncs(wait_request, wait_reply) == 1  # the answer tells of a result: it is made durable first
    get_reply = at(f'"job":{{"id":{ids[0]}', at('"op":"get"', wait_reply))
    assert fsyncs(wait_reply, get_reply) == 0  # a get shows the same results: they are durable already
