"""Retry and cancel of jobs that wait for another (a chain's steps, --after) or hold a unique key, end to end on
real processes: a retried step waits again for the one before it, takes its result, brings back the rest of its
chain; a retry that could never run, or would make a second open job with a key, is refused."""

from __future__ import annotations

import json
import os
import pwd
import signal

import pytest

from harness import Suite, wait_until
from tq.client import Refused

RECORD = '\n[tasks.rec]\npython = "tq_test_handlers:record"\n'


def _gate(suite: Suite) -> str:
    """[tasks.gate]: runs until the file `open` exists in the suite's directory, then prints "opened"."""
    return (f'[tasks.gate]\ncommand = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.05; done; echo opened", '
            f'"{suite.dir}/open"]\n')


def _flaky(suite: Suite, name: str = "flaky", extra: str = "") -> str:
    """[tasks.NAME]: prints its payload, and fails (no retries) until the file `fixed` exists."""
    return (f'[tasks.{name}]\ncommand = ["sh", "-c", "cat; [ -e \\"$0\\" ]", "{suite.dir}/fixed"]\nretries = 0\n'
            f'{extra}')


def test_a_cancelled_step_retried_while_the_one_before_runs_waits_for_it_and_takes_its_result(suite: Suite) -> None:
    suite.write_config(RECORD + _gate(suite))
    host, _workers = suite.start(workers=2)  # a free worker: a step queued too soon would run at once
    c = suite.client()
    gate, step, last = map(int, suite.tqctl("submit", "gate", "--then", "rec m", "--then", "rec z").stdout.split())
    after = int(suite.tqctl("submit", "--after", str(gate), "rec", "after").stdout)
    wait_until(lambda: c.get(gate)["state"] == "running", what="the gate running")
    assert suite.tqctl("cancel", str(step)).returncode == 0 and suite.tqctl("cancel", str(after)).returncode == 0
    assert c.get(last)["error"] == f"cancelled: job {step} before it in the chain is cancelled"
    r = suite.tqctl("retry", str(step))
    assert (r.returncode, r.stdout) == (0, f"job {step} deferred again: it waits for job {gate}, with 1 later step "
                                           f"of its chain ({last})\n")
    r = suite.tqctl("retry", str(after))
    assert (r.returncode, r.stdout) == (0, f"job {after} deferred again: it waits for job {gate}\n")
    assert [c.get(i)["state"] for i in (step, last, after)] == ["deferred"] * 3
    host.signal(signal.SIGKILL)  # they stay deferred behind the gate through a restart
    host.wait()
    suite.host()
    c = suite.client()
    assert [c.get(i)["state"] for i in (step, last, after)] == ["deferred"] * 3
    (suite.dir / "open").touch()
    jobs = c.wait_many([gate, step, last, after], timeout=15)
    assert [jobs[i]["state"] for i in (gate, step, last, after)] == ["done"] * 4
    assert (jobs[step]["payload"], jobs[last]["payload"]) == ("opened", "recorded m")
    assert sorted(suite.executions()) == ["after", "m", "z"] and suite.executions().index("m") < suite.executions(
        ).index("z")


def test_a_retried_dead_step_brings_back_the_rest_of_its_chain_and_a_step_after_it_alone_is_refused(
        suite: Suite) -> None:
    suite.write_config(RECORD + _flaky(suite))
    suite.start(workers=1)
    c = suite.client()
    ids = c.chain(("rec", ["a"]), ("flaky", []), ("rec", ["c"]), ("rec", ["d"]))
    _first, middle, third, fourth = ids
    jobs = c.wait_many(ids, timeout=10)
    assert [jobs[i]["state"] for i in ids] == ["done", "dead", "cancelled", "cancelled"]
    r = suite.tqctl("retry", str(third))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"tqctl: job {third} waits for job {middle}, which is dead: retry job {middle} (its later "
                        "steps come back with it)\n")
    r = suite.tqctl("retry", "--state", "cancelled", "--task", "rec")  # both refused: nothing runs out of order
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"tqctl: queued 0 job(s) again; 2 refused: job {third} waits for job {middle}, which is "
                        f"dead: retry job {middle} (its later steps come back with it); job {fourth} waits for job "
                        f"{third}, which is cancelled: retry job {third} (its later steps come back with it)\n")
    assert [c.get(i)["state"] for i in (third, fourth)] == ["cancelled"] * 2
    (suite.dir / "fixed").touch()
    r = suite.tqctl("retry", str(middle))
    assert (r.returncode, r.stdout) == (0, f"job {middle} queued again, with 2 later steps of its chain "
                                           f"({third} {fourth})\n")
    jobs = c.wait_many(ids, timeout=10)
    assert [jobs[i]["state"] for i in ids] == ["done"] * 4
    assert (jobs[middle]["payload"], jobs[third]["payload"], jobs[fourth]["payload"]) == (
        "recorded a", "recorded a", "recorded c")
    assert suite.executions() == ["a", "c", "d"]
    events = [json.loads(line) for line in suite.tqctl("events", "--json", "--job", str(fourth)).stdout.splitlines()]
    assert [e["detail"] for e in events if e["event"] == "retried"] == [f"with job {middle}, before it in the chain"]


def test_a_retry_that_would_make_a_second_open_job_with_a_unique_key_is_refused_naming_the_open_one(
        suite: Suite) -> None:
    suite.write_config(RECORD + _flaky(suite) + _flaky(suite, "uflaky", "unique = true\n"))
    suite.start(workers=1)
    c = suite.client()
    dead = c.submit("flaky", unique="K2")
    assert c.wait(dead, timeout=10)["state"] == "dead"
    held = c.submit("rec", "held", unique="K2", delay=600)
    r = suite.tqctl("retry", str(dead))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"tqctl: job {held} is open with the unique key of job {dead} (unique key K2): retry job "
                        f"{dead} once job {held} has finished\n")
    task_dead = c.submit("uflaky", "x")
    assert c.wait(task_dead, timeout=10)["state"] == "dead"
    task_held = c.submit("uflaky", "x", delay=600)
    r = suite.tqctl("retry", "--state", "dead", "--task", "uflaky")  # by filters: refused and counted the same
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"tqctl: queued 0 job(s) again; 1 refused: job {task_held} is open with the unique key of "
                        f"job {task_dead} (uflaky [\"x\"], its task has unique = true): retry job {task_dead} "
                        f"once job {task_held} has finished\n")
    assert c.get(dead)["state"] == c.get(task_dead)["state"] == "dead"
    assert suite.tqctl("cancel", str(held)).returncode == 0  # the key is free: the retry goes through
    assert suite.tqctl("retry", str(dead)).stdout == f"job {dead} queued again\n"


def test_a_chain_with_a_unique_key_open_creates_nothing_and_answers_with_the_open_chain(suite: Suite) -> None:
    suite.write_config(RECORD)
    suite.host()  # no worker: the chain stays open
    c = suite.client()
    r = suite.tqctl("submit", "--unique", "U3", "rec", "a", "--then", "rec x")
    assert (r.returncode, r.stderr) == (0, "")
    head, step = map(int, r.stdout.split())
    again = suite.tqctl("submit", "--unique", "U3", "rec", "a", "--then", "rec y", "--then", "rec z")
    assert (again.returncode, again.stdout) == (0, f"{head}\n{step}\n")
    assert again.stderr == (f"tqctl: job {head} was open with unique key U3: it and its chain ({head} {step}) answer "
                            "for this submit, nothing new was submitted\n")
    as_json = suite.tqctl("submit", "--json", "--unique", "U3", "rec", "a", "--then", "rec w")
    assert json.loads(as_json.stdout) == {"ids": [head, step], "existing": True}
    fresh = json.loads(suite.tqctl("submit", "--json", "--unique", "U4", "rec", "b", "--then", "rec v").stdout)
    assert fresh == {"ids": [step + 1, step + 2], "existing": False}
    assert c.get(head)["children"] == [step] and len(c.list_jobs()) == 4
    r = suite.tqctl("cancel", "--task", "rec")  # newest first: each step cancelled by the caller, and counted
    assert (r.returncode, r.stdout) == (0, "cancelled 4 job(s)\n")


def test_a_submit_answered_by_a_task_s_own_uniqueness_says_the_task_and_args_not_a_key(suite: Suite) -> None:
    suite.write_config(RECORD + '[tasks.uslow]\npython = "tq_test_handlers:record"\nunique = true\n')
    suite.host()  # no worker: the job stays open
    jid = int(suite.tqctl("submit", "uslow", "4").stdout)
    again = suite.tqctl("submit", "uslow", "4")
    assert (again.returncode, again.stdout) == (0, f"{jid}\n")
    assert again.stderr == (f'tqctl: job {jid} (uslow ["4"]) is open and its task has unique = true: it answers for '
                            "this submit, nothing new was submitted\n")
    assert json.loads(suite.tqctl("submit", "--json", "uslow", "4").stdout) == {"id": jid, "existing": True}
    chained = suite.tqctl("submit", "uslow", "4", "--then", "rec b")
    assert (chained.stdout, chained.stderr) == (f"{jid}\n", f'tqctl: job {jid} (uslow ["4"]) is open and its task '
                                                f"has unique = true: it and its chain ({jid}) answer for this submit, "
                                                "nothing new was submitted\n")


def test_cancel_and_retry_refuse_a_state_they_can_never_change_naming_those_they_can(suite: Suite) -> None:
    suite.host()
    c = suite.client()
    for command, states in (("cancel", "'queued', 'delayed', 'deferred', 'failed', 'assigned', 'running'"),
                            ("retry", "'dead', 'cancelled', 'failed'")):
        r = suite.tqctl(command, "--state", "done", "--task", "tick")
        assert (r.returncode, r.stdout) == (2, "")
        assert f"invalid choice: 'done' (choose from {states})" in r.stderr
    with pytest.raises(Refused, match="state done: a done job cannot be cancelled; the state filter takes queued, "
                                      "delayed, deferred, failed, assigned, running"):
        c.cancel_matching(state="done")
    with pytest.raises(Refused, match="state running: a running job cannot be retried; the state filter takes "
                                      "dead, cancelled, failed"):
        c.retry_matching(state="running")


def test_a_cancelled_job_says_who_cancelled_it_instead_of_its_last_error_and_result_says_cancelled_once(
        suite: Suite) -> None:
    suite.write_config(RECORD + '[tasks.again]\ncommand = ["false"]\nretries = 3\nbackoff = "10m"\n'
                       'backoff_max = "10m"\n')
    suite.start(workers=1)
    c = suite.client()
    jid = c.submit("again")
    wait_until(lambda: c.get(jid)["state"] == "failed", what="the first attempt failed")
    assert suite.tqctl("cancel", str(jid)).returncode == 0
    who = f"uid {os.getuid()} ({pwd.getpwuid(os.getuid()).pw_name})"
    assert c.get(jid)["error"] == f"cancelled by {who}"
    assert f"error:       cancelled by {who}\n" in suite.tqctl("show", str(jid)).stdout
    events = [json.loads(line) for line in suite.tqctl("events", "--json", "--job", str(jid)).stdout.splitlines()]
    assert events[-1]["event"] == "cancelled" and events[-1]["detail"] == f"by {who}"
    r = suite.tqctl("result", str(jid))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"tqctl: job {jid} cancelled by {who}\n")
    r = suite.tqctl("cancel", str(jid))
    assert (r.returncode, r.stderr) == (2, f"tqctl: job {jid} is cancelled; only queued, delayed, deferred, failed "
                                           "(waiting to retry), assigned or running jobs can be cancelled\n")
    head, step = c.chain(("again", []), ("rec", ["never"]))
    c.cancel(head)
    assert c.wait(step, timeout=10)["state"] == "cancelled"  # (at once, or once a running head has stopped)
    r = suite.tqctl("result", str(step))
    assert r.stderr == f"tqctl: job {step} cancelled: job {head} before it in the chain is cancelled\n"
