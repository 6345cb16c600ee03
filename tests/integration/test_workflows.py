"""Steering work, end to end on real processes: pause and resume a queue, `tqctl queues`, unique jobs, a run
time (`--at`); the state of each survives `kill -9` of tq-host."""

from __future__ import annotations

import datetime
import itertools
import json
import signal
import sqlite3
import time

import pytest

from harness import Daemon, Suite, wait_until
from tq.client import Client, JobTimeout

RECORD = '\n[tasks.rec]\npython = "tq_test_handlers:record"\n'


def test_a_paused_queue_takes_submits_runs_nothing_and_stays_paused_through_kill_9(suite: Suite) -> None:
    suite.write_config('queues = ["default", "mail"]\n' + RECORD)
    host, _workers = suite.start(workers=1)
    c = suite.client()
    r = suite.tqctl("pause", "default")
    assert (r.returncode, r.stdout) == (0, "queue default paused\n")
    held = c.submit("rec", "held")
    other = c.submit("rec", "other", queue="mail")
    assert c.wait(other, timeout=10)["state"] == "done"  # other queues go on
    host.signal(signal.SIGKILL)
    host.wait()
    suite.host()
    c = suite.client()  # (the old connection went with the old host)
    with pytest.raises(JobTimeout):
        c.wait(held, timeout=0.5)  # still paused after the restart
    queues = {q["queue"]: q for q in json.loads(suite.tqctl("queues", "--json").stdout)}
    assert queues["default"]["paused"] and queues["default"]["states"] == {"queued": 1}
    assert queues["default"]["oldest_queued_age"] > 0 and not queues["mail"]["paused"]
    table = suite.tqctl("queues").stdout.splitlines()
    assert table[0].split() == ["QUEUE", "QUEUED", "ASSIGNED", "RUNNING", "WAITING", "OLDEST", "PAUSED", "LIMITS",
                                "WORKERS"]
    assert table[1].split()[:2] == ["default", "1"] and table[1].split()[6] == "yes"
    assert suite.tqctl("resume", "default").stdout == "queue default resumed\n"
    assert c.wait(held, timeout=10)["state"] == "done"
    assert sorted(suite.executions()) == ["held", "other"]
    r = suite.tqctl("pause", "bad name!")
    assert r.returncode == 2 and "invalid queue name" in r.stderr
    r = suite.tqctl("pause", "nosuch")  # no configuration, worker or job names it: a typo, not a queue
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (5, "", 1) and "no queue nosuch" in r.stderr
    assert "nosuch" not in suite.tqctl("queues").stdout


def test_a_job_for_a_queue_no_worker_serves_is_taken_warned_of_once_and_listed(suite: Suite) -> None:
    host, _workers = suite.start(workers=1)
    c = suite.client()
    ids = [c.submit("task-1", queue="defualt") for _ in range(3)]
    assert all(c.get(i)["state"] == "queued" for i in ids)
    wait_until(lambda: "queue defualt: no live worker serves it" in host.text(), what="the warning")
    assert host.text().count("no live worker serves it") == 1
    row = next(line for line in suite.tqctl("queues").stdout.splitlines() if line.startswith("defualt"))
    assert "none: no live worker serves it" in row and row.split()[1] == "3"


def test_a_queue_s_oldest_queued_age_counts_from_when_its_job_was_queued_again(suite: Suite) -> None:
    """A delayed job, or one retried, is queued since then, not since its submit: an alert on
    tq_queue_oldest_queued_seconds must not fire at once for it."""
    suite.host()
    c = suite.client()
    c.pause("default")

    def oldest() -> float:
        return float(next(q for q in c.queues() if q["queue"] == "default")["oldest_queued_age"] or 0.0)

    delayed = c.submit("task-1", delay=1.5)
    created = c.get(delayed)["created_at"]
    wait_until(lambda: c.get(delayed)["state"] == "queued", 10, "the delayed job queued")
    assert oldest() < time.time() - created - 1.0, (oldest(), time.time() - created)
    c.cancel(delayed)
    wait_until(lambda: time.time() - created > 3, 10, "the job to be 3 s old")
    c.retry(delayed)
    assert oldest() < 1.0, oldest()


def test_a_unique_key_returns_the_open_job_through_kill_9_and_is_free_once_it_finished(suite: Suite) -> None:
    suite.write_config(RECORD)
    host = suite.host()
    c = suite.client()
    first = suite.tqctl("submit", "--unique", "nightly", "rec", "once")
    assert first.returncode == 0
    jid = int(first.stdout)
    assert int(suite.tqctl("submit", "--unique", "nightly", "rec", "again").stdout) == jid
    host.signal(signal.SIGKILL)
    host.wait()
    suite.host()
    c = suite.client()
    assert c.submit("rec", "after restart", unique="nightly") == jid  # nothing created
    suite.worker("1")
    assert c.wait(jid, timeout=10)["state"] == "done"
    assert suite.executions() == ["once"]
    assert c.submit("rec", "next", unique="nightly") != jid  # finished: the key is free again


def test_a_submit_with_unique_says_whether_it_was_new_or_answered_by_the_open_job(suite: Suite) -> None:
    suite.write_config(RECORD)
    suite.host()
    first = suite.tqctl("submit", "--unique", "k", "rec", "once")
    assert (first.returncode, first.stderr) == (0, "") and first.stdout.strip().isdigit()
    jid = int(first.stdout)
    again = suite.tqctl("submit", "--unique", "k", "rec", "again")  # stdout: the id alone, for scripts
    assert (again.returncode, again.stdout) == (0, f"{jid}\n")
    assert again.stderr == (f"tqctl: job {jid} was open with unique key k: it answers for this submit, nothing new "
                            "was submitted\n")
    as_json = suite.tqctl("submit", "--json", "--unique", "k", "rec", "more")
    assert json.loads(as_json.stdout) == {"id": jid, "existing": True}
    fresh = json.loads(suite.tqctl("submit", "--json", "--unique", "other", "rec", "x").stdout)
    assert fresh["existing"] is False and fresh["id"] > jid
    assert json.loads(suite.tqctl("submit", "--json", "rec", "y").stdout) == {"id": fresh["id"] + 1}


def test_at_runs_a_job_at_a_time_and_a_past_time_at_once(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    soon = datetime.datetime.now().astimezone() + datetime.timedelta(seconds=1.5)
    r = suite.tqctl("submit", "--at", soon.isoformat(), "task-1", "later")
    jid = int(r.stdout)
    job = c.get(jid)
    assert job["state"] == "delayed" and abs(job["run_at"] - soon.timestamp()) < 0.01
    assert c.wait(jid, timeout=10)["finished_at"] >= soon.timestamp()
    past = c.submit("task-1", at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    assert c.wait(past, timeout=10)["state"] == "done"
    start = time.time()
    r = suite.tqctl("submit", "--at", "tomorrow", "task-1")
    assert r.returncode == 2 and "not an ISO 8601 time: 'tomorrow'" in r.stderr and time.time() - start < 10
    r = suite.tqctl("submit", "--at", soon.isoformat(), "--delay", "5s", "task-1")
    assert r.returncode == 2 and "give --delay or --at, not both" in r.stderr


def test_a_queue_s_concurrency_caps_its_running_jobs_across_all_workers(suite: Suite) -> None:
    suite.write_config('\n[tasks.hang]\npython = "tq_test_handlers:hang"\n[queues.default]\nconcurrency = 1\n')
    suite.start(workers=2)
    c = suite.client()
    ids = c.submit_many([("hang", ["0.3"]) for _ in range(3)])
    jobs = sorted(c.wait_many(ids, timeout=30).values(), key=lambda j: j["started_at"])
    assert all(j["state"] == "done" for j in jobs) and len({j["worker"] for j in jobs}) >= 1
    for before, after in itertools.pairwise(jobs):
        assert after["started_at"] >= before["finished_at"], (before, after)  # never two at once
    row = next(q for q in c.queues() if q["queue"] == "default")
    assert row["concurrency"] == 1 and row["rate"] is None


def test_a_queue_s_rate_spaces_its_dispatches(suite: Suite) -> None:
    suite.write_config('\n[queues.default]\nrate = "5/s"\n')
    suite.start(workers=2)
    c = suite.client()
    ids = c.submit_many([("task-1", [str(i)]) for i in range(4)])
    starts = sorted(j["started_at"] for j in c.wait_many(ids, timeout=30).values())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.15 and starts[-1] - starts[0] >= 0.55, gaps  # one every 200 ms
    assert "1 at once" not in suite.tqctl("queues").stdout and "5/s" in suite.tqctl("queues").stdout


def _reload_host(suite: Suite, host: Daemon, extra: str) -> None:
    suite.write_config(extra)
    reloads = host.text().count("configuration reloaded")
    host.signal(signal.SIGHUP)
    wait_until(lambda: host.text().count("configuration reloaded") > reloads, 10, "the reload")


def test_a_rate_changed_at_reload_applies_to_the_jobs_already_waiting(suite: Suite) -> None:
    suite.write_config('\n[queues.default]\nrate = "1/h"\n')
    host, _workers = suite.start(workers=1)
    c = suite.client()
    ids = c.submit_many([("task-1", [str(i)]) for i in range(3)])
    assert c.wait(ids[0], timeout=10)["state"] == "done"
    with pytest.raises(JobTimeout):
        c.wait(ids[1], timeout=0.5)  # the next token is an hour away
    row = next(line for line in suite.tqctl("queues").stdout.splitlines() if line.startswith("default"))
    assert "1/h" in row.split(), row  # as configured, not 0.000277778/s
    _reload_host(suite, host, '\n[queues.default]\nrate = "5/s"\n')
    assert "tq-host: info: queue default: limits now 5/s (were 1/h) [queue=default]" in host.text()
    assert all(j["state"] == "done" for j in c.wait_many(ids[1:], timeout=10).values())  # not an hour later
    _reload_host(suite, host, '\n[queues.default]\nrate = "1/h"\n')  # lowered: an hour after the last dispatch
    with pytest.raises(JobTimeout):
        c.wait(c.submit("task-1", "late"), timeout=1)


EXCHANGES = '''
[exchanges.orders]
type = "topic"
bindings = [{ queue = "audit", key = "orders.#" }, { queue = "mail", key = "orders.created" },
            { queue = "audit", key = "*.created" }]
[exchanges.all]
type = "fanout"
bindings = [{ queue = "audit" }, { queue = "mail" }]
[exchanges.exact]
type = "direct"
bindings = [{ queue = "mail", key = "signup" }]
'''


def test_tqctl_queues_lists_each_queue_the_configuration_names_served_or_not(suite: Suite) -> None:
    suite.write_config(EXCHANGES + '[schedules.nightly]\nevery = "1h"\ntask = "task-1"\nqueue = "night"\n')
    suite.start(workers=1)  # it serves "default" alone
    rows = {line.split()[0]: line for line in suite.tqctl("queues").stdout.splitlines()[1:]}
    assert set(rows) == {"audit", "default", "mail", "night"}, rows  # named by a binding, a schedule, a worker
    assert all(rows[q].endswith("none: no live worker serves it") for q in ("audit", "mail", "night")), rows
    assert rows["default"].split()[-1] == "1", rows


def test_an_exchange_puts_one_job_on_each_bound_queue_the_key_matches_or_refuses_the_key(suite: Suite) -> None:
    suite.write_config('queues = ["audit", "mail"]\n' + EXCHANGES)
    suite.start(workers=1)
    c = suite.client()
    r = suite.tqctl("submit", "--exchange", "orders", "--key", "orders.created", "task-1", "o-1")
    assert r.returncode == 0, r.stderr
    ids = [int(i) for i in r.stdout.split()]
    jobs = c.wait_many(ids, timeout=10)
    assert [jobs[i]["queue"] for i in ids] == ["audit", "mail"]  # audit once, though two bindings match
    assert all(j["result"] == "task-1 o-1 processed" for j in jobs.values())
    paid = c.publish("orders", "orders.paid", "task-1")
    assert [c.get(i)["queue"] for i in paid] == ["audit"]
    fanned, signup = c.publish("all", "", "task-1"), c.publish("exact", "signup", "task-1")
    assert len(fanned) == 2 and len(signup) == 1
    c.wait_many(paid + fanned + signup, timeout=10)
    before = c.status()["states"]
    r = suite.tqctl("submit", "--exchange", "orders", "--key", "invoices.sent", "task-1")
    assert r.returncode == 2 and "routing key 'invoices.sent' matches no binding; nothing was submitted" in r.stderr
    r = suite.tqctl("submit", "--exchange", "nope", "task-1")
    assert r.returncode == 2 and "unknown exchange 'nope' (exchanges: all, exact, orders)" in r.stderr
    r = suite.tqctl("submit", "--exchange", "all", "--queue", "mail", "task-1")
    assert r.returncode == 2 and "takes no --queue" in r.stderr
    assert c.status()["states"] == before  # nothing was created by the refused ones


def test_a_schedule_runs_each_time_once_through_kill_9_and_catches_up_what_it_missed(suite: Suite) -> None:
    suite.write_config('\n[schedules.tick]\nevery = "1s"\ntask = "task-1"\nargs = ["tick"]\ncatch_up = "all"\n'
                       'overlap = true\n')
    host, _workers = suite.start(workers=1)
    c = suite.client()
    wait_until(lambda: len(c.list_jobs(task="task-1")) >= 3, timeout=15, what="three runs")
    host.signal(signal.SIGKILL)
    host.wait()
    time.sleep(2.5)  # tq-host is down through two or three runs (the test's subject: time passing)
    suite.host()
    c = suite.client()
    wait_until(lambda: len(c.list_jobs(task="task-1")) >= 8, timeout=15, what="runs after the restart")
    times = sorted(j["payload"]["at"] for j in c.list_jobs(task="task-1", limit=1000))
    steps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert steps == [1.0] * len(steps), times  # none lost, none doubled
    assert all(j["payload"]["schedule"] == "tick" for j in c.list_jobs(task="task-1"))
    (listed,) = json.loads(suite.tqctl("schedules", "--json").stdout)
    assert listed["name"] == "tick" and listed["every"] == 1.0 and listed["next_run"] > listed["last_run"]
    table = suite.tqctl("schedules").stdout.splitlines()
    assert table[0].split()[:3] == ["SCHEDULE", "WHEN", "TASK"] and table[1].startswith("tick")


def test_a_cron_schedule_400_days_behind_is_caught_up_with_bounded_work_and_the_host_answers(suite: Suite) -> None:
    """tq-host once walked the whole downtime one cron time at a time in its loop after READY: ~80 s a year of
    downtime here, every request hanging and systemd's watchdog killing it at each start, forever."""
    suite.write_config('\n[schedules.minutely]\ncron = "* * * * *"\ntask = "task-1"\n')
    suite.host()
    suite.store_rows("SELECT 1")  # (tq-host stopped: the store is the test's)
    db = sqlite3.connect(suite.dir / "state" / "tq.sqlite3")
    with db:
        db.execute("UPDATE schedules SET last_run = ? WHERE name = 'minutely'", (time.time() - 400 * 86400,))
    db.close()
    host = suite.host()
    c = Client(config=str(suite.config), timeout=20)  # (the old code took a minute or two here)
    try:
        assert c.status()["states"] is not None
        (job,) = wait_until(lambda: c.list_jobs(task="task-1"), what="the latest missed run")  # catch_up = "last"
        assert time.time() - 120 < job["payload"]["at"] <= time.time()
    finally:
        c.close()
    wait_until(lambda: "schedule minutely: more than 1000 run(s) missed while tq-host was down, 1 submitted now "
               "(catch_up = \"last\")" in host.text(), what="the catch-up's line")


def test_tqctl_schedules_shows_a_run_that_was_not_submitted_as_failed_with_the_error(suite: Suite) -> None:
    suite.write_config(f'\n[schedules.big]\nevery = "1s"\ntask = "task-1"\nargs = ["{"x" * 9000}"]\n')
    suite.host()
    c = suite.client()
    (listed,) = wait_until(lambda: [s for s in c.schedules() if s["last_error"]], timeout=15, what="a refused run")
    assert listed["last_job"] is None and listed["last_run"] is not None and "too large" in listed["last_error"]
    assert c.list_jobs(task="task-1") == []
    (row,) = suite.tqctl("schedules").stdout.splitlines()[1:]
    assert row.startswith("big") and "failed, not submitted: job 'task-1' is too large" in row


def test_tqctl_schedules_shows_a_skipped_run_as_skipped_not_next_to_the_job_of_the_run_before(suite: Suite) -> None:
    suite.write_config('\n[schedules.tick]\nevery = "1s"\ntask = "task-1"\n')  # no worker: its first job waits
    suite.host()
    c = suite.client()
    (listed,) = wait_until(lambda: [s for s in c.schedules() if s["last_skipped"]], timeout=15, what="a skipped run")
    (job,) = c.list_jobs(task="task-1")
    assert listed["last_job"] is None and listed["last_run"] > job["payload"]["at"]
    assert listed["last_skipped"] == f"job {job['id']} of the run before was still queued (overlap = false)"
    (row,) = suite.tqctl("schedules").stdout.splitlines()[1:]
    assert row.startswith("tick") and row.endswith(f"skipped: job {job['id']} of the run before was still queued "
                                                   "(overlap = false)"), row


def test_a_chain_runs_each_step_once_in_order_through_kill_9_with_the_result_before_it(suite: Suite) -> None:
    # The second step's queue has no worker until after the restart: tq-host dies with the chain half done.
    suite.write_config(RECORD + '[tasks.late]\npython = "tq_test_handlers:record"\nqueue = "later"\n'
                       '[worker.2]\nqueues = ["later"]\n')
    host = suite.host()
    suite.worker("1")
    c = suite.client()
    r = suite.tqctl("submit", "rec", "one", "--then", "late two", "--then", "rec three")
    assert r.returncode == 0, r.stderr
    first, second, third = map(int, r.stdout.split())
    assert c.wait(first, timeout=10)["state"] == "done"
    assert (c.get(second)["state"], c.get(third)["state"]) == ("queued", "deferred")
    host.signal(signal.SIGKILL)
    host.wait()
    suite.host()
    suite.worker("2")
    c = suite.client()
    jobs = c.wait_many([first, second, third], timeout=20)
    assert [jobs[i]["state"] for i in (first, second, third)] == ["done"] * 3
    assert jobs[second]["payload"] == "recorded one" and jobs[third]["payload"] == "recorded two"
    assert suite.executions() == ["one", "two", "three"]  # each once, in order
    shown = suite.tqctl("show", str(second)).stdout
    assert f"parent:      {first}" in shown and f"children:    {third}" in shown


def test_after_waits_for_a_job_and_a_failed_step_cancels_the_rest_of_the_chain(suite: Suite) -> None:
    suite.write_config(RECORD + '[tasks.fail]\npython = "tq_test_handlers:fail"\nretries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    gate = c.submit("rec", "gate", delay=0.5)
    later = int(suite.tqctl("submit", "--after", str(gate), "rec", "later").stdout)
    assert c.get(later)["state"] == "deferred"
    assert c.wait(later, timeout=10)["state"] == "done" and suite.executions() == ["gate", "later"]
    ids = c.chain(("rec", ["a"]), ("fail", ["boom"]), ("rec", ["never"]))
    jobs = c.wait_many(ids, timeout=10)
    assert [jobs[i]["state"] for i in ids] == ["done", "dead", "cancelled"]
    assert jobs[ids[2]]["error"] == f"cancelled: job {ids[1]} before it in the chain is dead"
    assert "never" not in suite.executions()
    r = suite.tqctl("submit", "--after", "99999", "rec")
    assert r.returncode == 5 and "no job 99999" in r.stderr
