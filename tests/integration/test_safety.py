"""Issue 10's safety properties on real processes: a poison job ends dead, a job runs with the handler tq-host
resolved when it accepted it, started_at is when the handler started, and every attempt records its cost."""

from __future__ import annotations

import json
import os
import resource
import signal
import time
import uuid

import posix_ipc

from harness import Daemon, Suite, wait_until
from tq.transport import posix

# A command that kills the worker running it (its parent's parent: sh is the command, the worker runs sh).
POISON = '\n[tasks.poison]\ncommand = ["sh", "-c", "kill -9 $PPID; sleep 5"]\nretries = 2\nbackoff = "50ms"\n'


def test_a_job_that_kills_its_worker_every_time_ends_dead_and_other_jobs_are_done(suite: Suite) -> None:
    suite.write_config(POISON, lease="2s")
    suite.host()
    workers = {str(i): suite.worker(str(i)) for i in (1, 2)}
    suite.wait_live(2)
    c = suite.client()
    poison = c.submit("poison")
    others = c.submit_many([("task-1", [str(i)]) for i in range(20)])
    deaths = 0
    deadline = time.monotonic() + 60
    while c.get(poison)["state"] != "dead":  # play systemd: restart a worker the job killed
        assert time.monotonic() < deadline, c.get(poison)
        for name, daemon in list(workers.items()):
            if daemon.proc.poll() is not None:
                deaths += 1
                workers[name] = suite.worker(name)
        time.sleep(0.05)
    job = c.get(poison)
    assert job["attempts"] == 3 and deaths >= 2  # retries = 2: three attempts, each lost with its worker
    assert job["error"].startswith("worker ") and "lost while running attempt 3 of 3" in job["error"]
    assert all(c.wait(jid, timeout=30)["state"] == "done" for jid in others)


def test_a_job_runs_as_the_host_resolved_it_when_only_the_host_was_reloaded(suite: Suite) -> None:
    suite.write_config('\n[tasks.slow]\ncommand = ["sleep", "3"]\n')
    host, (w1,) = suite.start(workers=1)
    dropin = suite.dir / "tq.d"
    dropin.mkdir()
    (dropin / "50-slow.toml").write_text('[tasks.slow]\ncommand = ["false"]\nretries = 0\n'
                                         '[tasks.new]\ncommand = ["echo", "new task ran"]\n')
    start = len(host.notify.messages)
    host.signal(signal.SIGHUP)
    host.notify.wait_for(lambda m: m == "READY=1", start=start)
    c = suite.client()
    slow = c.wait(c.submit("slow"), timeout=10)
    assert (slow["state"], slow["error"], slow["handler"]) == ("dead", "exit status 1", {"handler": "command",
                                                                                        "command": ["false"]})
    new = c.wait(c.submit("new", "x"), timeout=10)  # the worker's config has no such task: the job says how
    assert (new["state"], new["result"]) == ("done", "new task ran x")
    assert w1.proc.poll() is None


def test_a_job_runs_as_the_host_resolved_it_when_only_the_worker_was_reloaded(suite: Suite) -> None:
    suite.write_config('\n[tasks.greet]\ncommand = ["echo", "hello"]\n')
    _host, (w1,) = suite.start(workers=1)
    dropin = suite.dir / "tq.d"
    dropin.mkdir()
    (dropin / "50-greet.toml").write_text('[tasks.greet]\ncommand = ["false"]\n')
    start = len(w1.notify.messages)
    w1.signal(signal.SIGHUP)
    w1.notify.wait_for(lambda m: m == "READY=1", start=start)
    c = suite.client()
    job = c.wait(c.submit("greet"), timeout=10)
    assert (job["state"], job["result"]) == ("done", "hello")  # as the host (not yet reloaded) accepted it


def test_started_at_is_when_the_handler_started_on_the_worker(suite: Suite) -> None:
    suite.write_config('\n[tasks.nap]\ncommand = ["sleep", "0.5"]\n[worker.1]\nprefetch = 4\n')
    suite.start(workers=1)
    c = suite.client()
    first, second = c.submit_many([("nap", []), ("nap", [])])  # both in the one worker's inbox at once
    a, b = c.wait(first, timeout=10), c.wait(second, timeout=10)
    assert b["started_at"] >= a["started_at"] + 0.45  # the second waited in the inbox behind the first
    assert a["finished_at"] - a["started_at"] >= 0.45


def test_every_attempt_records_its_cost_in_show_and_the_journal_line(suite: Suite) -> None:
    suite.write_config('\n[tasks.burn]\ncommand = ["python3", "-c", "x = bytearray(20 << 20); '
                       'sum(range(3 * 10**6))"]\n[tasks.bad]\ncommand = ["sh", "-c", "exit 3"]\nretries = 0\n')
    host, _ = suite.start(workers=1)
    c = suite.client()
    burn = c.wait(c.submit("burn"), timeout=30)
    usage = burn["usage"]
    assert burn["state"] == "done" and usage["exit"] == 0
    assert usage["user"] + usage["sys"] > 0.02 and usage["max_rss_kb"] > 20 * 1024
    bad = c.wait(c.submit("bad"), timeout=30)
    assert (bad["state"], bad["usage"]["exit"]) == ("dead", 3)
    shown = suite.tqctl("show", str(burn["id"])).stdout
    assert "usage:" in shown and "max rss" in shown and "exit 0" in shown
    wait_until(lambda: f"job {burn['id']} done: in " in host.text(), 10, "the done line")
    line = next(x for x in host.text().splitlines() if f"job {burn['id']} done" in x)
    assert "cpu " in line and "max rss" in line
    assert json.loads(suite.tqctl("show", str(bad["id"]), "--json").stdout)["usage"]["exit"] == 3


def _running(worker: object, jid: int) -> None:
    worker.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))  # type: ignore[attr-defined]


def test_cancel_of_a_running_command_asks_it_to_stop_then_the_worker_takes_new_work(suite: Suite) -> None:
    cleaned = suite.dir / "cleaned"
    suite.write_config(f'\n[tasks.tidy]\ncommand = ["sh", "-c", "trap \\"echo tidy > {cleaned}; exit 0\\" TERM; '
                       'sleep 30 & wait"]\n[tasks.stubborn]\ncommand = ["sh", "-c", "trap \\"\\" TERM; sleep 30"]\n'
                       'kill_grace = "300ms"\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("tidy")
    _running(w1, jid)
    r = suite.tqctl("cancel", str(jid))
    assert r.returncode == 0 and "stopping it" in r.stdout
    job = c.wait(jid, timeout=10)
    assert job["state"] == "cancelled" and job["error"].startswith(f"cancelled by uid {os.getuid()} (")
    assert "): stopped on its worker (" in job["error"]
    assert cleaned.read_text() == "tidy\n"  # SIGTERM first: it had the chance to clean up
    stubborn = c.submit("stubborn")
    _running(w1, stubborn)
    started = time.monotonic()
    c.cancel(stubborn)
    assert c.wait(stubborn, timeout=10)["state"] == "cancelled"
    assert time.monotonic() - started < 5  # SIGKILL after its kill_grace of 300 ms
    assert c.wait(c.submit("task-1"), timeout=10)["result"] == "task-1 processed"
    assert w1.proc.poll() is None


def test_a_timeout_sends_sigterm_first_and_says_timed_out(suite: Suite) -> None:
    cleaned = suite.dir / "cleaned"
    suite.write_config(f'\n[tasks.slow]\ncommand = ["sh", "-c", "trap \\"echo bye > {cleaned}; exit 0\\" TERM; '
                       'sleep 30 & wait"]\ntimeout = "300ms"\nretries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    job = c.wait(c.submit("slow"), timeout=10)
    assert (job["state"], job["error"]) == ("dead", "timed out after 0.3s")
    assert cleaned.read_text() == "bye\n"


def test_a_python_handler_sees_it_was_cancelled_and_returns_without_a_worker_restart(suite: Suite) -> None:
    suite.write_config('\n[tasks.patient]\npython = "tq_test_handlers:patient"\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("patient", "30")
    _running(w1, jid)
    c.cancel(jid)
    assert c.wait(jid, timeout=10)["state"] == "cancelled"
    assert suite.executions() == [f"stopped {jid}"]
    assert c.wait(c.submit("task-1"), timeout=10)["state"] == "done"
    assert "restarting this worker process" not in w1.text()


def test_bulk_cancel_and_retry_by_filters_print_how_many(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    ids = c.submit_many([("resize", ["a"]), ("resize", ["b"]), ("mail", ["c"])])
    for jid in ids:
        c.wait(jid, timeout=10)
    delayed = [c.submit("resize", str(i), delay=600) for i in range(3)]
    r = suite.tqctl("cancel", "--state", "delayed", "--task", "resize")
    assert (r.returncode, r.stdout) == (0, "cancelled 3 job(s)\n")
    r = suite.tqctl("retry", "--state", "cancelled", "--older-than", "1h")
    assert (r.returncode, r.stdout) == (0, "queued 0 job(s) again\n")  # none is that old
    r = suite.tqctl("retry", "--state", "cancelled", "--json")
    assert sorted(json.loads(r.stdout)["ids"]) == sorted(delayed)
    r = suite.tqctl("cancel", "7", "--state", "queued")
    assert r.returncode == 2 and "not both" in r.stderr


def test_a_command_past_its_limits_fails_naming_the_limit_and_the_worker_lives_on(suite: Suite) -> None:
    py = 'command = ["python3", "-c", "{}"]\nretries = 0\n'
    suite.write_config(
        '\n[tasks.hog]\n' + py.format("x = bytearray(1 << 30)") + 'memory_max = "256M"\n'
        '[tasks.spin]\n' + py.format("while True: pass") + 'cpu_max = "1s"\n'
        '[tasks.leak]\n' + py.format("import os; [os.open('/dev/null', 0) for _ in range(64)]") +
        'open_files_max = 16\n'
        '[tasks.fits]\n' + py.format("x = bytearray(8 << 20); print(len(x))") + 'memory_max = "256M"\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    hog, spin, leak, fits = (c.wait(c.submit(t), timeout=30) for t in ("hog", "spin", "leak", "fits"))
    assert hog["state"] == "dead" and hog["error"].startswith("killed: memory_max 256M exceeded")
    assert spin["state"] == "dead" and spin["error"].startswith("killed: cpu_max 1s exceeded")
    assert spin["usage"]["user"] + spin["usage"]["sys"] >= 0.9
    assert leak["state"] == "dead" and leak["error"].startswith("failed: open_files_max 16 reached")
    assert (fits["state"], fits["result"]) == ("done", str(8 << 20))
    assert w1.proc.poll() is None


def _free_queue_bytes() -> int:
    """How much of this user's RLIMIT_MSGQUEUE is free now: fill it with queues, largest first, then remove them."""
    made: list[posix_ipc.MessageQueue] = []
    free = 0
    msg_max = posix.kernel_limits()["msg_max"]
    try:
        for depth, size in ((msg_max, 8192), (1, 8192), (1, 1024), (1, 128)):
            while True:
                try:
                    made.append(posix_ipc.MessageQueue(f"/tqt-fill-{uuid.uuid4().hex[:8]}", posix_ipc.O_CREX,
                                                       max_messages=depth, max_message_size=size))
                except OSError:
                    break
                free += posix.mailbox_bytes(depth, size)
    finally:
        for q in made:
            q.unlink()
            q.close()
    return free


def test_a_worker_whose_inbox_does_not_fit_the_budget_starts_with_a_smaller_one(suite: Suite) -> None:
    suite.host()
    soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    used = soft - _free_queue_bytes()
    room = posix.mailbox_bytes(5, 8192) + 1000  # an inbox of 5 fits, one of prefetch 8 + 1 = 9 does not
    argv = ["prlimit", f"--msgqueue={used + room}", "--", *suite._python("tq.worker", "1")]
    worker = Daemon("worker1", argv, suite.env, suite.dir)
    suite.daemons.append(worker)
    worker.ready()
    text = worker.text()
    assert "holds 4 messages, not worker.prefetch + 1 = 9" in text and "prefetch 3" in text, text
    suite.wait_live(1)
    c = suite.client()
    assert c.workers()[0]["prefetch"] == 3
    assert all(c.wait(j, timeout=10)["state"] == "done" for j in c.submit_many([("task-1", [])] * 20))
