"""Dispatch with real processes: a job is sent ahead to a busy worker only where that cannot leave another worker
idle, and a job handed to a worker but not started says so (assigned, not running) until its handler starts."""

from __future__ import annotations

import json

from harness import Suite, wait_until

NAP = '[tasks.nap]\npython = "tq_test_handlers:hang"\n'


def test_a_slow_job_waits_for_an_idle_worker_instead_of_behind_a_running_one(suite: Suite) -> None:
    suite.write_config(NAP)
    suite.start(workers=2)
    c = suite.client()
    long, *short = c.submit_many([("nap", ["2"]), ("nap", ["0.2"]), ("nap", ["0.2"]), ("nap", ["0.2"])])
    jobs = c.wait_many([long, *short], timeout=30)
    assert all(j["state"] == "done" for j in jobs.values()), jobs
    # Dealt ahead, one short job waited behind the long one on its worker (2 s) while the other worker idled.
    assert {jobs[i]["worker"] for i in short} != {jobs[long]["worker"]}
    assert all(jobs[i]["worker"] != jobs[long]["worker"] for i in short), jobs
    assert max(jobs[i]["finished_at"] for i in short) < jobs[long]["finished_at"]


def test_a_job_waiting_in_a_busy_worker_s_inbox_is_assigned_not_running_and_cancelled_at_once(suite: Suite) -> None:
    suite.write_config(NAP)
    suite.start(workers=1)
    c = suite.client()
    c.wait_many(c.submit_many([("nap", ["0"])] * 5), timeout=30)  # tq-host learns that nap is a fast task
    long, first, second = c.submit_many([("nap", ["3"]), ("nap", ["0"]), ("nap", ["0"])])
    wait_until(lambda: c.get(long)["state"] == "running", what="the long job to start")
    assigned = json.loads(suite.tqctl("list", "--state", "assigned", "--json").stdout)
    assert sorted(j["id"] for j in assigned) == [first, second]
    assert all(j["worker"] == "1" and j["started_at"] is None for j in assigned), assigned
    running = json.loads(suite.tqctl("list", "--state", "running", "--json").stdout)
    assert [j["id"] for j in running] == [long] and running[0]["started_at"] is not None
    cancel = suite.tqctl("cancel", str(first))
    assert cancel.returncode == 0, cancel.stderr
    assert c.get(first)["state"] == "cancelled" and c.get(long)["state"] == "running"  # at once, not after it
    jobs = c.wait_many([long, second], timeout=30)
    assert jobs[long]["state"] == jobs[second]["state"] == "done"
    assert c.get(first)["state"] == "cancelled"
    assert jobs[second]["started_at"] >= jobs[long]["finished_at"] - 0.5  # it did wait for the long one
