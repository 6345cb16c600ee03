"""Jobs end to end: real tq-host and tq-worker processes over real POSIX queues and a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import posix_ipc
import pytest

from harness import Suite, as_from_a_terminal, wait_until
from tq.client import HostUnreachable, JobTimeout, NotFound, Refused

RECORD = '\n[tasks.rec]\npython = "tq_test_handlers:record"\n'


def test_tqctl_submit_wait_prints_the_result(suite: Suite) -> None:
    suite.start(workers=1)
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")
    r = suite.tqctl("submit", "task-1", "a", "b")
    assert r.returncode == 0 and r.stdout.strip().isdigit()
    jid = int(r.stdout)
    r = suite.tqctl("result", "--wait", str(jid))
    assert (r.returncode, r.stdout) == (0, "task-1 a b processed\n")
    shown = json.loads(suite.tqctl("show", str(jid), "--json").stdout)
    for key in ("id", "task", "args", "queue", "priority", "state", "attempts", "result", "error", "worker",
                "created_at", "started_at", "finished_at"):
        assert key in shown
    assert shown["state"] == "done" and shown["args"] == ["a", "b"] and shown["worker"] == "1"


def test_ctrl_c_on_submit_wait_says_the_job_id_and_exits_130(suite: Suite) -> None:
    """On a terminal (stderr a pty, as where Ctrl-C is pressed): tqctl shows the job's state while it waits,
    which tells the test it is waiting; the job has no worker, so it waits until interrupted."""
    suite.host()
    c = suite.client()
    master, slave = pty.openpty()
    argv = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "submit", "--wait", "task-1", "x"]
    tqctl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=suite.env,
                             preexec_fn=as_from_a_terminal)
    os.close(slave)
    seen = b""
    try:
        while b": queued" not in seen:  # `job N: queued, attempt 0, 1s`
            assert select.select([master], [], [], 15)[0], seen
            seen += os.read(master, 4096)
        tqctl.send_signal(signal.SIGINT)
        stdout, _ = tqctl.communicate(timeout=10)
        with contextlib.suppress(OSError):  # EIO once tqctl has exited and the pty's last writer is gone
            while chunk := os.read(master, 4096):
                seen += chunk
    finally:
        tqctl.kill()
        os.close(master)
    (job,) = c.list_jobs(task="task-1")
    assert (tqctl.returncode, stdout) == (130, b"")
    assert f"tqctl: interrupted; job {job['id']} stays submitted (tqctl result --wait {job['id']})" in seen.decode()
    assert job["state"] == "queued"


def test_thousand_jobs_over_four_workers_each_done_exactly_once(suite: Suite) -> None:
    suite.write_config(RECORD)
    suite.start(workers=4)
    c = suite.client()
    ids = c.submit_many([("rec", [str(i)]) for i in range(1000)])
    for jid in ids:
        assert c.wait(jid, timeout=60)["state"] == "done"
    rows = suite.store_rows("SELECT state, attempts, result, worker FROM jobs")
    assert len(rows) == 1000
    assert {(state, attempts) for state, attempts, _, _ in rows} == {("done", 1)}
    assert sorted(r[2] for r in rows) == sorted(f"recorded {i}" for i in range(1000))
    assert len({r[3] for r in rows}) == 4  # all four workers took part
    assert sorted(suite.executions()) == sorted(str(i) for i in range(1000))


def test_worker_killed_mid_job_is_redelivered_and_done_on_attempt_two(suite: Suite) -> None:
    suite.write_config('\n[tasks.slow]\ncommand = ["sh", "-c", '
                       '"[ \\"$TQ_ATTEMPT\\" = 1 ] && exec sleep 30; echo ok"]\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("slow")
    w1.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))
    w1.signal(signal.SIGKILL)
    w1.wait()
    suite.worker("1")  # the instance comes back, as systemd would restart it
    job = c.wait(jid, timeout=30)
    assert (job["state"], job["attempts"], job["result"]) == ("done", 2, "ok")


def test_host_killed_and_restarted_loses_no_acknowledged_job(suite: Suite) -> None:
    suite.write_config(RECORD)
    host, _ = suite.start(workers=2)
    acked: list[int] = []
    stop = threading.Event()

    def submitter() -> None:
        c = suite.client()
        i = 0
        while not stop.is_set():
            try:
                acked.append(c.submit("rec", str(i)))
            except HostUnreachable:
                stop.wait(0.01)  # not acknowledged: the submitter retries after a pause
            i += 1

    t = threading.Thread(target=submitter)
    t.start()
    try:
        wait_until(lambda: len(acked) >= 300, what="300 acknowledged submits")
        host.signal(signal.SIGKILL)
        host.wait()
        n_before_restart = len(acked)
        suite.host()
        wait_until(lambda: len(acked) >= n_before_restart + 100, what="submits after the restart")
    finally:
        stop.set()
        t.join()
    c = suite.client()
    for jid in acked:
        assert c.wait(jid, timeout=60)["state"] == "done"
    done = suite.store_rows("SELECT id FROM jobs WHERE state = 'done'")
    assert set(acked) <= {r[0] for r in done}


def test_stopped_worker_loses_its_lease_and_another_worker_does_the_job(suite: Suite) -> None:
    suite.write_config(RECORD, lease="1s", heartbeat="100ms")
    _host, (w1, _w2) = suite.start(workers=2)
    w1.signal(signal.SIGSTOP)
    c = suite.client()
    ids = [c.submit("rec", str(i)) for i in range(6)]
    jobs = [c.wait(jid, timeout=30) for jid in ids]
    assert all(j["state"] == "done" and j["worker"] == "2" for j in jobs)
    assert any(j["attempts"] == 2 for j in jobs)  # some were first handed to the stopped worker
    w1.signal(signal.SIGCONT)
    suite.wait_live(2)
    # the stopped worker ran what was left in its inbox: those results were late and ignored
    assert all(c.get(jid)["worker"] == "2" for jid in ids)
    assert suite.store_rows("SELECT count(*) FROM jobs WHERE state='done'") == [(6,)]


def test_retries_then_dead_then_retry_brings_it_back(suite: Suite) -> None:
    flag = suite.dir / "fixed"
    suite.write_config(f'\n[tasks.flaky]\ncommand = ["sh", "-c", "test -e {flag} || {{ echo broken >&2; exit 3; }};'
                       f' echo fixed"]\nretries = 1\nbackoff = "50ms"\n')
    suite.start(workers=1)
    r = suite.tqctl("submit", "--wait", "flaky")
    assert r.returncode == 1 and "exit status 3: broken" in r.stderr
    jid = suite.client().list_jobs(task="flaky")[0]["id"]
    job = suite.client().get(jid)
    assert (job["state"], job["attempts"]) == ("dead", 2)
    flag.touch()
    assert suite.tqctl("retry", str(jid)).returncode == 0
    r = suite.tqctl("result", "--wait", str(jid))
    assert (r.returncode, r.stdout) == (0, "fixed\n")


def test_delayed_job_waits_in_the_store(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    jid = c.submit("task-1", delay=1.0)
    assert c.get(jid)["state"] == "delayed"
    job = c.wait(jid, timeout=10)
    assert job["state"] == "done"
    assert job["started_at"] - job["created_at"] >= 1.0


def test_higher_priority_jobs_run_first(suite: Suite) -> None:
    suite.write_config(RECORD + "\n[worker.1]\nprefetch = 1\n")
    suite.host()
    c = suite.client()
    ids = [c.submit("rec", f"low{i}", priority=0) for i in range(3)]
    ids += [c.submit("rec", f"high{i}", priority=10) for i in range(3)]
    ids += [c.submit("rec", "mid", priority=5)]
    suite.worker("1")
    for jid in ids:
        c.wait(jid, timeout=20)
    assert suite.executions() == ["high0", "high1", "high2", "mid", "low0", "low1", "low2"]


def test_oversized_payload_is_refused_with_the_limit(suite: Suite) -> None:
    suite.start(workers=1)
    r = suite.tqctl("submit", "task-1", "--payload", "x" * 9000)
    assert r.returncode == 2
    assert "max_message_size is 8192 bytes" in r.stderr


def test_unknown_task_is_refused_with_the_known_ones_when_echo_is_off(suite: Suite) -> None:
    suite.write_config(RECORD, echo_catch_all=False)
    suite.start(workers=1)
    r = suite.tqctl("submit", "nope")
    assert r.returncode == 2
    assert "unknown task 'nope'; known tasks: rec" in r.stderr


def test_command_gets_args_and_payload_and_is_killed_on_timeout(suite: Suite) -> None:
    suite.write_config('\n[tasks.cat]\ncommand = ["sh", "-c", "printf \\"%s|\\" \\"$@\\"; cat", "sh"]\n'
                       '[tasks.sleepy]\ncommand = ["sh", "-c", "sleep 30 & sleep 30"]\ntimeout = "300ms"\n'
                       'retries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    job = c.wait(c.submit("cat", "a b", "c", payload="stdin-text"), timeout=10)
    assert job["result"] == "a b|c|stdin-text"
    job = c.wait(c.submit("sleepy"), timeout=10)
    assert (job["state"], job["error"]) == ("dead", "timed out after 0.3s")


def test_malformed_bytes_in_every_queue_do_not_crash_the_daemons(suite: Suite) -> None:
    host, (w1,) = suite.start(workers=1)
    for name in (f"{suite.prefix}.host", f"{suite.prefix}.w.1"):
        q = posix_ipc.MessageQueue(name)
        for junk in (b"\x00garbage", b"\x01J{not json", b'\x01R{"instance":1}', b"\xff" * 100):
            q.send(junk, priority=1)
        q.close()
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")
    assert host.proc.poll() is None and w1.proc.poll() is None
    assert suite.client().status()["malformed_messages"] == 4
    assert "dropped a malformed message" in w1.text()


def test_cancel_a_delayed_job(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    jid = c.submit("task-1", delay=60)
    assert suite.tqctl("cancel", str(jid)).returncode == 0
    assert c.get(jid)["state"] == "cancelled"
    r = suite.tqctl("cancel", str(jid))
    assert r.returncode == 2 and "only queued, delayed, deferred, failed (waiting to retry), assigned or running" \
        in r.stderr
    assert suite.tqctl("show", "999999").returncode == 5


@pytest.mark.parametrize("command", [["status"], ["list"], ["workers"], ["show", "1"]])
def test_every_command_has_json_output(suite: Suite, command: list[str]) -> None:
    suite.start(workers=1)
    suite.client().wait(suite.client().submit("task-1"), timeout=10)
    r = suite.tqctl(*command, "--json")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)


def test_host_not_running_exits_3(suite: Suite) -> None:
    r = suite.tqctl("status")
    assert r.returncode == 3 and "not reachable" in r.stderr


def test_timeout_kills_the_whole_process_group(suite: Suite) -> None:
    pidfile = suite.dir / "bg.pid"
    suite.write_config(f'\n[tasks.bg]\ncommand = ["sh", "-c", "sleep 30 & echo $! > {pidfile}; wait"]\n'
                       'timeout = "300ms"\nretries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    assert c.wait(c.submit("bg"), timeout=10)["error"] == "timed out after 0.3s"
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(gone, what="the background child of the timed-out command to die")


def test_python_handler_past_its_timeout_restarts_the_worker_in_place(suite: Suite) -> None:
    suite.write_config('\n[tasks.hang]\npython = "tq_test_handlers:hang"\ntimeout = "300ms"\nretries = 0\n'
                       + RECORD)
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    job = c.wait(c.submit("hang", "30"), timeout=10)
    assert (job["state"], job["error"]) == ("dead", "timed out after 0.3s")
    job = c.wait(c.submit("rec", "after"), timeout=20)
    assert job["state"] == "done" and w1.proc.poll() is None  # same pid, a fresh process image
    assert "restarting this worker process" in w1.text()


def test_finished_jobs_past_the_retention_count_are_pruned_oldest_first(suite: Suite) -> None:
    suite.write_config("", host="retain_count = 5")
    suite.start(workers=1)
    c = suite.client()
    ids = c.submit_many([("task-1", [str(i)]) for i in range(30)])
    c.wait(ids[-1], timeout=10)  # one worker, equal priorities: the last id finishes last (the others may be gone)
    pending = c.submit("task-1", delay=60)
    wait_until(lambda: c.status()["states"]["done"] <= 5, what="pruning down to retain_count")
    remaining = [j["id"] for j in c.list_jobs(state="done", limit=100)]
    assert remaining == sorted(ids)[-5:][::-1]  # the newest five stay
    assert c.get(pending)["state"] == "delayed"  # open jobs are never pruned


def test_a_full_store_is_pruned_in_batches_of_a_thousandth_of_the_retention_count(suite: Suite) -> None:
    """Between the minute's checks, the excess goes once it reaches 0.1 % of retain_count (3 here): deleting
    the few jobs each step finished, every step, cost a full store a third of its drain rate."""
    suite.write_config("", host="retain_count = 3000")
    suite.start(workers=1)
    c = suite.client()
    ids = c.submit_many([("task-1", [str(i)]) for i in range(3002)])
    c.wait(ids[-1], timeout=30)  # one worker: the last id finishes last
    assert c.status()["states"]["done"] == 3002  # 2 over: not yet a batch
    c.wait(c.submit("task-1", "the third"), timeout=10)
    wait_until(lambda: c.status()["states"]["done"] == 3000, what="a batch of 3 pruned")
    for gone in ids[:3]:  # the oldest three
        with pytest.raises(NotFound):
            c.get(gone)
    assert c.get(ids[3])["state"] == "done"


def test_finished_jobs_past_the_retention_age_are_pruned(suite: Suite) -> None:
    suite.write_config("", host='retain_age = "1s"')
    suite.start(workers=1)
    c = suite.client()
    jid = c.submit("task-1")
    c.wait(jid, timeout=10)
    c.submit("task-1", delay=60)  # the newest job is never pruned (its id + 1 is the next id)
    wait_until(lambda: c.status()["states"]["done"] == 0, what="the finished job to age out")
    r = suite.tqctl("show", str(jid))
    assert r.returncode == 5


def test_tqctl_submit_batch_from_stdin(suite: Suite) -> None:
    suite.start(workers=1)
    lines = "".join(json.dumps({"task": "task-1", "args": [str(i)], "priority": i}) + "\n" for i in range(3))
    r = suite.tqctl("submit", "--batch", "-", input=lines)
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert len(ids) == 3
    assert [suite.client().wait(i, timeout=10)["result"] for i in ids] == [f"task-1 {i} processed" for i in range(3)]
    r = suite.tqctl("submit", "--batch", "-", input='{"task": "task-1"}\nnot json\n')
    assert r.returncode == 2 and "-: line 2: not JSON" in r.stderr


def test_fast_jobs_go_to_one_worker_in_a_batch_and_slow_ones_side_by_side(suite: Suite) -> None:
    suite.write_config('\n[tasks.slow]\ncommand = ["/bin/sleep"]\n')
    suite.start(workers=3)
    c = suite.client()
    c.wait(c.submit("task-1", "warm-up"), timeout=10)  # now the host knows task-1 runs in microseconds
    fast = [c.wait(jid, timeout=10)["worker"] for jid in c.submit_many([("task-1", [str(i)]) for i in range(6)])]
    assert len(set(fast)) == 1, fast  # one worker woken for the six
    slow = [c.wait(jid, timeout=10)["worker"] for jid in c.submit_many([("slow", ["0.3"])] * 3)]
    assert sorted(slow) == ["1", "2", "3"], slow  # an unknown (or slow) task is spread: no job waits behind another


def test_a_step_of_large_jobs_is_split_into_messages_within_the_size_limit(suite: Suite) -> None:
    suite.start(workers=1)
    c = suite.client()
    c.wait(c.submit("task-1", "warm-up"), timeout=10)  # a fast task: the next ones go to the worker together
    big = ["x" * 3000 + str(i) for i in range(8)]  # two fit in one 8192-byte message, three do not
    ids = c.submit_many([("task-1", [arg]) for arg in big])
    assert [c.wait(jid, timeout=10)["result"] for jid in ids] == [f"task-1 {arg} processed" for arg in big]


def test_a_reply_bigger_than_the_socket_buffer_waits_for_a_slow_reader_without_stalling_others(
        suite: Suite) -> None:
    suite.host()
    c = suite.client()
    c.submit_many([("task-1", ["x" * 200]) for _ in range(3000)])  # a list reply of about 1.5 MB
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.settimeout(10)
    slow.connect(str(suite.dir / "tq.sock"))
    slow.sendall(json.dumps({"op": "list", "rid": 1, "limit": 5000}).encode() + b"\n")
    assert c.status()["states"]["queued"] == 3000  # the host serves others while that reply waits
    reply = bytearray()
    while not reply.endswith(b"\n"):
        chunk = slow.recv(65536)
        assert chunk, "connection closed before the whole reply came"
        reply += chunk
    slow.close()
    assert len(json.loads(reply)["jobs"]) == 3000


def test_submit_and_wait_is_one_request_with_the_id_first_and_the_job_when_finished(suite: Suite) -> None:
    suite.write_config('\n[tasks.fail]\ncommand = ["/bin/false"]\nretries = 0\n')
    host = suite.host()
    c = suite.client()
    with pytest.raises(JobTimeout, match=r"job (\d+) did not finish in time") as e:
        c.submit_and_wait("task-1", "early", wait_timeout=0.3)  # no worker yet
    job_id = int(e.value.args[0].split()[1])
    assert (e.value.finished, e.value.pending) == ({}, [job_id])  # as wait_many's: this job did not finish
    assert c.get(job_id)["state"] == "queued"  # acknowledged before the wait: it stays submitted
    with pytest.raises(JobTimeout, match=f"job {job_id} did not finish in time") as w:
        c.wait(job_id, timeout=0.2)
    assert (w.value.finished, w.value.pending) == ({}, [job_id])
    suite.worker("1")
    job = c.submit_and_wait("task-1", "x", wait_timeout=10)
    assert (job["state"], job["result"]) == ("done", "task-1 x processed")
    assert c.submit_and_wait("fail", wait_timeout=10)["state"] == "dead"
    assert c.wait(job_id, timeout=10)["result"] == "task-1 early processed"  # no reply was left over
    with pytest.raises(Refused, match="wait_for takes one job"):
        c.call("submit", jobs=[{"task": "task-1"}] * 2, wait_for=1)
    assert host.proc.poll() is None


def test_wait_many_is_one_request_for_many_jobs_and_tells_which_did_not_finish_in_time(suite: Suite) -> None:
    suite.write_config('\n[tasks.fail]\ncommand = ["/bin/false"]\nretries = 0\n')
    host = suite.host()
    c = suite.client()
    ids = [*c.submit_many([("task-1", [str(i)]) for i in range(300)]), c.submit("fail")]
    with pytest.raises(JobTimeout, match=r"301 of 301 jobs did not finish in time") as e:
        c.wait_many(ids, timeout=0.2)  # no worker yet
    assert e.value.finished == {} and e.value.pending == sorted(ids)
    assert c.wait_many(ids, timeout=0) == {}  # at once: none has finished
    requests = []
    waiting = threading.Thread(target=lambda: requests.append(c.wait_many(ids, timeout=30)))
    waiting.start()
    suite.worker("1")
    waiting.join(40)
    (jobs,) = requests
    assert list(jobs) == ids  # in the order given
    assert [j["result"] for j in list(jobs.values())[:3]] == ["task-1 0 processed", "task-1 1 processed",
                                                               "task-1 2 processed"]
    assert sum(j["state"] == "done" for j in jobs.values()) == 300 and jobs[ids[-1]]["state"] == "dead"
    assert c.wait_many([ids[5], ids[5]], timeout=1) == {ids[5]: jobs[ids[5]]}  # finished ones: answered at once
    with pytest.raises(NotFound, match=r"no job 999999"):
        c.wait_many([ids[0], 999999])
    for bad in ([], ["1"], [1.5]):
        with pytest.raises(Refused, match="ids takes from 1 to"):
            c.call("wait", ids=bad)
    assert host.proc.poll() is None


def test_tqctl_result_with_several_ids_prints_each_and_exits_with_the_worst(suite: Suite) -> None:
    suite.write_config('\n[tasks.fail]\ncommand = ["/bin/false"]\nretries = 0\n')
    suite.host()
    c = suite.client()
    a, b = c.submit("task-1", "a"), c.submit("task-1", "b")
    r = suite.tqctl("result", str(a), str(b))
    assert r.returncode == 6 and f"job {a} has not finished (it is queued)" in r.stderr
    r = suite.tqctl("result", "--wait", "--wait-timeout", "0.2", str(a), str(b))
    assert r.returncode == 6 and r.stdout == ""
    suite.worker("1")
    r = suite.tqctl("result", "--wait", str(a), str(b))
    assert (r.returncode, r.stdout) == (0, f"{a}: task-1 a processed\n{b}: task-1 b processed\n")
    failed = c.submit("fail")
    r = suite.tqctl("result", "--wait", str(b), str(failed))
    assert r.returncode == 1 and r.stdout == f"{b}: task-1 b processed\n" and f"job {failed} dead" in r.stderr
    r = suite.tqctl("result", "--json", str(a), str(failed))
    assert [j["id"] for j in json.loads(r.stdout)] == [a, failed] and r.returncode == 1


def test_tqctl_result_with_an_id_no_job_has_prints_the_others_and_exits_5(suite: Suite) -> None:
    suite.write_config('\n[tasks.fail]\ncommand = ["/bin/false"]\nretries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    a, failed = c.submit("task-1", "a"), c.submit("fail")
    c.wait_many([a, failed], timeout=10)
    missing = failed + 1000
    for wait in ([], ["--wait"], ["--wait", "--wait-timeout", "10s"]):
        r = suite.tqctl("result", *wait, str(a), str(missing), str(failed))
        assert r.stdout == f"{a}: task-1 a processed\n", (wait, r)
        assert f"tqctl: no job {missing}\n" in r.stderr and f"job {failed} dead" in r.stderr, (wait, r)
        assert r.returncode == 5, (wait, r)  # the worst: 5 (no such job) over 1 (failed)
    r = suite.tqctl("result", "--json", str(a), str(missing))
    assert r.returncode == 5 and r.stderr == ""
    done, gone = json.loads(r.stdout)
    assert done["id"] == a and done["state"] == "done"
    assert gone == {"id": missing, "ok": False, "error": f"no job {missing}", "exit_code": 5}
    late = c.submit("task-1", "late", delay=3600)
    r = suite.tqctl("result", "--wait", "--wait-timeout", "0.2", str(missing), str(late))
    assert (r.returncode, r.stdout) == (6, "") and f"no job {missing}" in r.stderr  # the worst: 6 over 5
    r = suite.tqctl("result", "--wait", str(missing), str(missing + 1))
    assert r.returncode == 5 and r.stderr.count("no job") == 2
