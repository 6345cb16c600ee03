"""Issue 10's safety properties on real processes: a poison job ends dead, a job runs with the handler tq-host
resolved when it accepted it, started_at is when the handler started, and every attempt records its cost."""

from __future__ import annotations

import json
import signal
import time

from harness import Suite, wait_until

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
