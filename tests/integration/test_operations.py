"""What an operator meets running tq: make run twice, a worker started twice, workers gone for good, the
journal's words for routine stops, and `tqctl events --follow` across a host restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import posix_ipc
import pytest

from harness import ROOT, Daemon, Suite, wait_until

BIN = Path(sys.executable).parent
SMALL = "[mqueue]\nmax_messages = 2\nmax_message_size = 1024\n[worker]\nprefetch = 1\n"  # the shared queue memory


class MakeRun:
    """scripts/run.sh (make run) on a directory of the suite's, with a small queue footprint (a drop-in)."""

    def __init__(self, suite: Suite, name: str = "run") -> None:
        self.dir = suite.dir / name
        (self.dir / "tq.d").mkdir(parents=True)
        (self.dir / "tq.d" / "small.toml").write_text(SMALL)
        self.config = self.dir / "tq.toml"
        self.env = {**suite.env, "BIN": str(BIN)}
        self.runs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.dir.parent / f"{self.dir.name}-{len(self.runs)}.out"
        with open(out, "wb") as f:
            proc = subprocess.Popen(["scripts/run.sh", str(self.dir)], cwd=ROOT, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT)
        self.runs.append((proc, out))
        return proc, out

    def tqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "tqctl"), "--config", str(self.config), *args], env=self.env,
                              capture_output=True, text=True, timeout=30)

    def close(self) -> None:
        for proc, _out in self.runs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.config.exists():
            prefix = re.search(r'prefix = "([^"]+)"', self.config.read_text())
            for name in [".host", *(f".w.{i}" for i in range(1, 5))] if prefix else []:
                try:
                    posix_ipc.unlink_message_queue(prefix.group(1) + name)  # type: ignore[union-attr]
                except posix_ipc.ExistentialError:
                    pass


@pytest.fixture
def make_run(suite: Suite) -> Iterator[MakeRun]:
    runner = MakeRun(suite)
    try:
        yield runner
    finally:
        runner.close()


def _worker_pids(run: MakeRun) -> set[int]:
    return {w["pid"] for w in json.loads(run.tqctl("workers", "--json").stdout)}


# ---- make run, and a worker started twice -------------------------------------------------------------------

def test_make_run_submits_once_the_workers_are_live_and_a_second_one_stops_without_workers(
        make_run: MakeRun) -> None:
    first, out = make_run.start()
    wait_until(lambda: "tq is running" in out.read_text(), 30, "the first make run")
    text = out.read_text()
    assert "task-1 processed" in text
    assert "no live worker serves it" not in text  # the demo job came after the workers' hello
    pids = _worker_pids(make_run)
    assert len(pids) == 4

    second, out2 = make_run.start()
    assert second.wait(30) == 1
    assert "already running" in out2.read_text()
    assert _worker_pids(make_run) == pids  # no second set under the same names
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    assert "tq stopped" in out.read_text()


def test_make_run_stops_when_its_own_host_does_not_start(suite: Suite, make_run: MakeRun) -> None:
    # A tq-host on make run's state dir behind another socket: make run's own host refuses the store.
    suite.config.write_text(f'[host]\nstate_dir = "{make_run.dir}/state"\nsocket = "{suite.dir}/tq.sock"\n'
                            f'[mqueue]\nprefix = "{suite.prefix}"\nmax_messages = 2\n')
    suite.host()
    proc, out = make_run.start()
    assert proc.wait(30) == 1
    text = out.read_text()
    assert "tq-host did not start" in text, text
    assert "tq-worker" not in text  # no worker was started


def _hand_worker(suite: Suite, run: MakeRun, instance: str) -> Daemon:
    """A worker started by hand for make run's config, as README "Daemons" says."""
    d = Daemon(f"hand{instance}", [str(BIN / "tq-worker"), "--config", str(run.config), instance], run.env, suite.dir)
    suite.daemons.append(d)
    return d.ready()


def _prefix(run: MakeRun) -> str:
    prefix = re.search(r'prefix = "([^"]+)"', run.config.read_text())
    assert prefix
    return prefix.group(1)


def _queues_of(run: MakeRun) -> list[str]:
    names = [_prefix(run) + n for n in [".host", *(f".w.{i}" for i in range(1, 6))]]
    there = []
    for name in names:
        try:
            posix_ipc.MessageQueue(name).close()
        except posix_ipc.ExistentialError:
            continue
        there.append(name)
    return there


def _clean(run: MakeRun) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scripts/clean.sh", str(run.dir)], cwd=ROOT, env=run.env, capture_output=True, text=True,
                          timeout=60)


def test_make_clean_removes_the_queues_of_a_stopped_make_run_and_refuses_while_a_daemon_of_it_runs(
        suite: Suite, make_run: MakeRun) -> None:
    proc, out = make_run.start()
    wait_until(lambda: "tq is running" in out.read_text(), 30, "make run")
    hand = _hand_worker(suite, make_run, "5")
    assert len(_queues_of(make_run)) == 6
    clean = _clean(make_run)
    assert clean.returncode == 1 and "tq-host still runs" in clean.stderr, clean.stderr
    assert "nothing removed" in clean.stderr

    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    text = out.read_text()
    held = r"its 6 queues \(\S+\) stay for the next make run, holding [\d,]+ of your RLIMIT_MSGQUEUE"
    assert re.search(held, text), text
    assert "make clean removes them" in text
    clean = _clean(make_run)  # the worker started by hand still runs
    assert clean.returncode == 1 and f"tq-worker 5 still runs (pid {hand.pid}" in clean.stderr, clean.stderr
    assert len(_queues_of(make_run)) == 6

    hand.signal(signal.SIGTERM)
    hand.wait()
    clean = _clean(make_run)
    assert clean.returncode == 0, clean.stderr
    assert "removed 6 queues" in clean.stdout
    assert _queues_of(make_run) == []


def test_make_clean_does_not_take_a_failure_of_its_python_for_a_running_daemon(suite: Suite) -> None:
    run = MakeRun(suite, "broken")
    subprocess.run(["scripts/local-config.sh", str(run.dir)], cwd=ROOT, check=True, capture_output=True)
    bin_dir = suite.dir / "broken-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/bin/sh\necho 'ModuleNotFoundError: no posix_ipc' >&2\nexit 1\n")
    (bin_dir / "python3").chmod(0o755)
    clean = subprocess.run(["scripts/clean.sh", str(run.dir)], cwd=ROOT, env={**run.env, "BIN": str(bin_dir)},
                           capture_output=True, text=True, timeout=30)
    assert clean.returncode == 1
    assert "could not check or remove the queues" in clean.stderr, clean.stderr
    assert "still runs" not in clean.stderr


def test_make_run_says_when_its_host_exits_and_ctrl_c_stops_a_host_started_again_by_hand(
        suite: Suite, make_run: MakeRun) -> None:
    proc, out = make_run.start()
    wait_until(lambda: "tq is running" in out.read_text(), 30, "make run")
    first = json.loads(make_run.tqctl("status", "--json").stdout)["pid"]
    os.kill(first, signal.SIGKILL)  # a crash
    said = f"make run: tq-host (pid {first}) exited with status 137; the workers wait for it"
    wait_until(lambda: said in out.read_text(), 30, "make run's line about its tq-host")
    assert f"--config {make_run.config}" in out.read_text()  # how to start it again
    assert proc.poll() is None

    hand = Daemon("hand-host", [str(BIN / "tq-host"), "--config", str(make_run.config)], make_run.env, suite.dir)
    suite.daemons.append(hand)
    hand.ready()
    assert make_run.tqctl("submit", "--wait", "again").stdout.strip() == "again processed"
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert hand.wait() == 0
    text = out.read_text()
    assert f"make run: stopped tq-host (pid {hand.pid}), started by hand" in text, text
    assert text.index("stopped tq-host") < text.index("tq stopped")


def test_make_run_stopped_by_sigterm_exits_0_and_does_not_start_beside_a_worker_of_its_own_started_by_hand(
        suite: Suite, make_run: MakeRun) -> None:
    proc, out = make_run.start()
    wait_until(lambda: "tq is running" in out.read_text(), 30, "make run")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0  # a requested stop: make says no "Error 143"

    hand = Daemon("hand1", [str(BIN / "tq-worker"), "--config", str(make_run.config), "1"], make_run.env, suite.dir)
    suite.daemons.append(hand)
    lock = make_run.dir / "workers" / f"{_prefix(make_run).strip('/')}.w.1.lock"
    wait_until(lambda: lock.read_text().strip() == str(hand.pid), 30, "the hand-started worker's instance lock")
    second, out2 = make_run.start()
    assert second.wait(30) == 1
    text = out2.read_text()
    assert f"tq-worker 1 still runs (pid {hand.pid}; it holds {lock})" in text, text
    assert "make run: tq already runs on" in text
    assert "tq stopped" not in text  # nothing was started
    assert hand.proc.poll() is None


def test_a_second_worker_process_under_a_live_instance_name_refuses_before_touching_the_inbox(suite: Suite) -> None:
    _host, (w1,) = suite.start(workers=1)
    inbox = posix_ipc.MessageQueue(f"{suite.prefix}.w.1")
    try:
        before = os.stat(f"/dev/mqueue{suite.prefix}.w.1").st_ino if os.path.isdir("/dev/mqueue") else None
        second = suite.worker("1", ready=False)
        assert second.wait(15) == 1
        text = second.text()  # (the log file of both: worker1.log)
        (line,) = [line for line in text.splitlines() if "error" in line or "Traceback" in line]
        assert f"cannot start: worker instance 1 is already running (pid {w1.pid};" in line
        assert text.count(" ready: ") == 1 and "recreated inbox" not in text
        if before is not None:
            assert os.stat(f"/dev/mqueue{suite.prefix}.w.1").st_ino == before  # the same inbox, not recreated
        (w,) = suite.client().workers()
        assert (w["pid"], w["state"]) == (w1.pid, "live")
        jid = suite.client().submit("echo", "still served")
        assert suite.client().wait(jid, timeout=10)["state"] == "done"
    finally:
        inbox.close()
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    suite.worker("1")  # ready: the lock went with the process


# ---- workers gone for good ------------------------------------------------------------------------------------

def _lose(suite: Suite, worker: Daemon, instance: str) -> None:
    worker.proc.kill()
    worker.wait()
    c = suite.client()
    wait_until(lambda: any(w["instance"] == instance and w["state"] == "lost" for w in c.workers()), 15,
               f"worker {instance} lost")


def test_a_lost_worker_is_forgotten_by_tqctl_workers_forget_and_a_live_one_is_not(suite: Suite) -> None:
    host, (_w1, w2) = suite.start(workers=2)
    _lose(suite, w2, "2")
    r = suite.tqctl("workers", "--forget", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "worker 1 is live" in r.stderr, r.stderr
    r = suite.tqctl("workers", "--forget", "nosuch")
    assert r.returncode == 5 and "no worker 'nosuch'" in r.stderr, r.stderr
    r = suite.tqctl("workers", "--forget", "2")
    assert (r.returncode, r.stdout) == (0, "forgot worker 2 (lost)\n"), r.stderr
    assert [w["instance"] for w in suite.client().workers()] == ["1"]
    assert suite.client().status()["workers_known"] == 1
    assert "forgot worker 2 (lost): tqctl workers --forget by uid" in host.text()
    host.signal(signal.SIGTERM)  # forgotten in the store too
    assert host.wait() == 0
    suite.host()
    suite.wait_live(1)
    assert [w["instance"] for w in suite.client().workers()] == ["1"]


def test_a_lost_worker_is_forgotten_after_host_forget_lost_across_a_host_restart(suite: Suite) -> None:
    suite.write_config("", host='forget_lost = "4s"')
    host, (_w1, w2) = suite.start(workers=2)
    _lose(suite, w2, "2")
    host.signal(signal.SIGTERM)
    assert host.wait() == 0
    host = suite.host()
    c = suite.client()
    assert {w["instance"]: w["state"] for w in c.workers()}["2"] == "lost"  # still lost: not fenced again
    wait_until(lambda: [w["instance"] for w in c.workers()] == ["1"], 15, "worker 2 forgotten")
    assert "forgot worker 2 (lost): lost for more than 4s (host.forget_lost)" in host.text()


# ---- the journal's and the stream's words -----------------------------------------------------------------------

def _fences(suite: Suite) -> list[str]:
    return [e.get("detail", "") for e in suite.client().events() if e["event"] == "fenced"]


def test_routine_stops_and_restarts_say_what_happened_and_a_crash_is_a_warning(suite: Suite) -> None:
    suite.write_config('\n[tasks.slow]\ncommand = ["sleep", "30"]\n')
    host, (w1,) = suite.start(workers=1)
    c = suite.client()
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    wait_until(lambda: c.workers()[0]["state"] == "stopped", 10, "worker 1 stopped")
    assert _fences(suite)[-1].startswith("it is stopping: it has handed back or finished its jobs"), _fences(suite)
    w2 = suite.worker("1")  # started again: a new process under the same name
    suite.wait_live(1)
    assert _fences(suite)[-1].startswith(f"a new process, pid {w2.pid} (pid {w1.pid} before)"), _fences(suite)
    assert not [e for e in c.events() if "without reporting" in e.get("detail", "")]
    assert ": warning:" not in host.text(), host.text()

    jid = c.submit("slow")
    wait_until(lambda: c.get(jid)["state"] == "running", 10, "the job on worker 1")
    w2.proc.kill()  # a crash, and systemd's restart under the same name before the lease runs out
    w2.wait()
    w3 = suite.worker("1")
    wait_until(lambda: "job(s) lost with it" in host.text(), 10, "the fault in the journal")
    assert (f"tq-host: warning: worker 1: 1 job(s) lost with it: the worker restarted: pid {w2.pid} is gone, "
            f"pid {w3.pid} took its place") in host.text()
    assert f"tq-host: warning: job {jid} failed: worker 1 lost while running attempt 1" in host.text()  # as events
    assert [e["event"] for e in c.events(job=jid)][2:4] == ["started", "failed"]  # (submitted, assigned before)



def test_tq_host_s_lines_about_a_worker_or_a_queue_carry_its_journal_field(suite: Suite) -> None:
    """`journalctl TQ_WORKER=1` / `TQ_QUEUE=mail` find what tq-host says about them (the plain lines show the
    same fields the journal gets: log._PlainFormatter)."""
    suite.write_config('queues = ["default", "mail"]\n')
    host, (w1,) = suite.start(workers=1)
    wait_until(lambda: "worker 1 is live" in host.text(), 10, "the live line")
    assert f"worker 1 (pid {w1.pid}) says hello; queues default,mail [worker=1]" in host.text(), host.text()
    assert "worker 1 is live [worker=1]" in host.text(), host.text()
    assert suite.tqctl("pause", "mail").returncode == 0 and suite.tqctl("resume", "mail").returncode == 0
    suite.client().submit("task-1", queue="nobody")
    wait_until(lambda: "queue nobody: no live worker serves it" in host.text(), 10, "the warning")
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    wait_until(lambda: "worker 1 stopped" in host.text(), 10, "the stopped line")
    lines = host.text().splitlines()
    for start, field in (("queue mail paused", "[queue=mail]"), ("queue mail resumed", "[queue=mail]"),
                         ("queue nobody: no live worker", "[queue=nobody]"),
                         ("worker 1 is stopping", "[worker=1]"), ("worker 1 stopped", "[worker=1]")):
        assert any(f"tq-host: info: {start}" in line or f"tq-host: warning: {start}" in line for line in lines), start
        assert all(line.endswith(field) for line in lines if start in line), (start, lines)


# ---- events --follow across a host restart ------------------------------------------------------------------------

class Follower:
    """`tqctl events --follow --json` as a process; its lines read by a thread (awaited, never slept for)."""

    def __init__(self, suite: Suite) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "events",
                                      "--follow", "--json"], env=suite.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, object]] = []
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(stream, keep), daemon=True)
                        for stream, keep in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))]
        for t in self.threads:
            t.start()

    def _read(self, stream: IO[str], keep: list[Any]) -> None:
        for line in stream:
            with self.changed:
                keep.append(json.loads(line) if keep is self.lines else line)
                self.changed.notify_all()

    def wait_for(self, what: str, predicate: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, 15), f"{what}: {self.lines[-10:]} {self.errors}"

    def has(self, job: int, event: str) -> bool:
        return any(e.get("job") == job and e.get("event") == event for e in self.lines)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_events_follow_across_a_host_restart_replays_what_happened_meanwhile_and_reports_the_gap(
        suite: Suite) -> None:
    host, _workers = suite.start(workers=1)
    follower = Follower(suite)
    try:
        c = suite.client()
        before = c.submit("echo", "before")
        follower.wait_for("the job before", lambda: follower.has(before, "done"))
        host.signal(signal.SIGTERM)
        assert host.wait() == 0
        follower.wait_for("the host gone", lambda: any("following again once" in e for e in follower.errors))
        follower.proc.send_signal(signal.SIGSTOP)  # it resubscribes only after the job below ran
        try:
            suite.host()
            suite.wait_live(1)
            meanwhile = suite.client().submit("echo", "meanwhile")
            assert suite.client().wait(meanwhile, timeout=10)["state"] == "done"
        finally:
            follower.proc.send_signal(signal.SIGCONT)
        follower.wait_for("the job meanwhile", lambda: follower.has(meanwhile, "done"))
        after = suite.client().submit("echo", "after")
        follower.wait_for("the job after", lambda: follower.has(after, "done"))
        follower.wait_for("following again", lambda: any(e == "tqctl: following again\n" for e in follower.errors))
        gap = [i for i, e in enumerate(follower.lines) if "missed" in e]
        assert len(gap) == 1, follower.lines
        assert follower.lines[gap[0]]["missed"] is None and follower.lines[gap[0]]["reason"] == "tq-host restarted"
        names = [(e.get("job"), e.get("event")) for e in follower.lines[gap[0]:] if e.get("job")]
        assert names == [(meanwhile, "submitted"), (meanwhile, "assigned"), (meanwhile, "done"),
                         (after, "submitted"), (after, "assigned"), (after, "done")], names
        assert not any(e.get("job") == before for e in follower.lines[gap[0]:])  # not replayed twice
    finally:
        follower.close()


def test_events_follow_text_says_how_many_events_are_missed_or_that_it_is_not_known() -> None:
    from tq.ctl.follow import _event_text

    line = _event_text({"missed": None, "since": 1.0, "until": 2.0, "reason": "tq-host restarted"})
    assert "event(s) missed between" in line and "tq-host restarted (how many is not known)" in line
    assert _event_text({"missed": 3}).endswith("... 3 event(s) missed: this reader fell behind")
