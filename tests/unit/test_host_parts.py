"""tq-host's parts in-process, one call at a time (huey's MemoryHuey is the model): the job table's transitions,
the Sync fence against transport.MemoryQueue, the dispatcher's choices, the waiters, and the control socket's
framing over a socketpair. A real SQLite store; no processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parts import Parts, make_parts
from tq import configload, control, protocol
from tq.host import tokens
from tq.host.dispatch import BLOCKED_BACKOFF
from tq.host.jobs import InvalidTransition
from tq.host.records import JobRecord
from tq.host.schedules import Scheduler
from tq.host.server import Conn, Server
from tq.host.workerstate import WorkerState
from tq.log import Burst
from tq.states import JobState


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\nretries = 1\nbackoff = "1s"\n'
                                        '[tasks.slow]\ncommand = ["sleep"]\nqueue = "slowq"\n')
    yield p
    p.close()


def submit(parts: Parts, *specs: dict[str, object], wait_for: float | None = None) -> list[int]:
    a, b = socket.socketpair()
    request: dict[str, object] = {"op": "submit", "rid": 1, "jobs": list(specs)}
    if wait_for is not None:
        request["wait_for"] = wait_for
    parts.requests.handle(Conn(a, uid=1000), json.dumps(request).encode())
    replies = parts.ledger.take()
    a.close()
    b.close()
    assert replies and replies[0][1]["ok"], replies
    ids: list[int] = replies[0][1]["ids"]
    return ids


def job(parts: Parts, job_id: int) -> JobRecord:
    found = parts.jobs.find(job_id)
    assert found is not None
    return found


# ---- the job table ----------------------------------------------------------------------------------------

def test_a_failed_attempt_waits_its_backoff_then_runs_again_then_dies_out_of_attempts(parts: Parts) -> None:
    finals: list[tuple[int, str]] = []
    parts.jobs.on_final = lambda j: finals.append((j.id, j.state))
    (jid,) = submit(parts, {"task": "t", "args": ["a"]})
    j = job(parts, jid)
    assert parts.jobs.pop_ready(["default"]) is j
    parts.jobs.assign(j, "1")
    assert (j.state, j.attempts, j.worker) == (JobState.ASSIGNED, 1, "1")
    parts.jobs.finish(j, _result(j, False, "boom"))
    assert j.state == JobState.FAILED and j.run_at is not None and j.run_at > time.time() + 0.5  # backoff 1s
    parts.jobs.promote_due()
    assert j.state == JobState.FAILED  # not yet due
    j.run_at = time.time() - 1
    parts.jobs.delayed[0] = (j.run_at, jid)
    parts.jobs.promote_due()
    assert j.state == JobState.QUEUED and parts.jobs.pop_ready(["default"]) is j
    parts.jobs.assign(j, "2")
    parts.jobs.finish(j, _result(j, False, "boom again"))
    assert (j.state, j.attempts, j.error) == (JobState.DEAD, 2, "boom again")  # retries = 1: two attempts
    assert finals == [(jid, JobState.DEAD)] and jid not in parts.jobs.jobs
    parts.store.commit()
    stored = parts.store.get(jid)
    assert stored is not None and (stored.state, stored.attempts, stored.error) == ("dead", 2, "boom again")
    assert parts.jobs.counts == {"dead": 1, "queued": 0, "assigned": 0, "failed": 0}


def test_retry_brings_a_cancelled_job_back_and_a_done_one_cannot_be_cancelled(parts: Parts) -> None:
    a, b = submit(parts, {"task": "t"}, {"task": "t"})
    ja, jb = job(parts, a), job(parts, b)
    parts.jobs.assign(parts.jobs.pop_ready(["default"]) or ja, "1")
    parts.jobs.finish(ja, _result(ja, True))
    with pytest.raises(InvalidTransition, match="only queued, delayed, deferred, failed"):
        parts.jobs.cancel(ja)
    assert parts.jobs.cancel(jb) is False  # queued: cancelled at once
    assert jb.state == JobState.CANCELLED and jb.finished_at is not None
    assert parts.jobs.pop_ready(["default"]) is None  # the cancelled job's heap entry is skipped
    with pytest.raises(InvalidTransition, match="only dead, cancelled or failed"):
        parts.jobs.retry(ja)
    parts.jobs.retry(jb)
    assert (jb.state, jb.attempts, jb.finished_at) == (JobState.QUEUED, 0, None)
    assert parts.jobs.pop_ready(["default"]) is jb
    assert parts.jobs.counts["cancelled"] == 0 and parts.jobs.counts["done"] == 1


def test_the_reply_to_a_cancel_shows_the_job_cancelled(parts: Parts) -> None:
    (jid,) = submit(parts, {"task": "t"})
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, 0), json.dumps({"op": "cancel", "rid": 1, "id": jid}).encode())
    ((_, reply),) = parts.ledger.take()
    a.close()
    b.close()
    assert (reply["job"]["state"], reply["stopping"]) == ("cancelled", False)
    assert reply["job"]["finished_at"] is not None


def test_a_running_job_is_cancelled_on_its_worker_then_ends_cancelled(parts: Parts) -> None:
    parts.start_worker("1")
    parts.dispatcher.timed("t", 0.001)  # a fast task: both go to worker 1
    stopped, lost = submit(parts, {"task": "t"}, {"task": "t"})
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    parts.inbox_messages("1")
    for jid in (stopped, lost):
        parts.started(job(parts, jid))
    a = socket.socketpair()
    for jid in (stopped, lost):
        parts.requests.handle(Conn(a[0], 0), json.dumps({"op": "cancel", "rid": jid, "id": jid}).encode())
    replies = [r for _, r in parts.ledger.take()]
    assert [(r["ok"], r["stopping"]) for r in replies] == [(True, True), (True, True)]
    cancels = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Cancel)]
    assert [(m.id, m.attempt) for m in cancels] == [(stopped, 1), (lost, 1)]
    assert job(parts, stopped).state == JobState.RUNNING  # until the worker reports
    parts.result(job(parts, stopped), ok=False)
    assert job(parts, stopped).state == JobState.CANCELLED
    parts.worker_says(protocol.Hello("1", 999, ["default"], 8))  # the worker died before it reported the other
    (sync,) = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced("1", sync.token))
    assert job(parts, lost).state == JobState.CANCELLED  # not retried: it was being cancelled
    for end in a:
        end.close()


def test_bulk_cancel_and_retry_take_the_jobs_that_match_every_filter(parts: Parts) -> None:
    mail = submit(parts, *[{"task": "mail.send", "queue": "mail"}] * 3)
    other = submit(parts, {"task": "resize"}, {"task": "mail.send"})
    a, b = socket.socketpair()
    conn = Conn(a, 0)
    parts.requests.handle(conn, json.dumps({"op": "cancel", "rid": 1, "queue": "mail", "task": "mail.send"}).encode())
    parts.requests.handle(conn, json.dumps({"op": "cancel", "rid": 2, "queue": "mail", "older_than": 3600}).encode())
    parts.requests.handle(conn, json.dumps({"op": "cancel", "rid": 3}).encode())
    parts.requests.handle(conn, json.dumps({"op": "retry", "rid": 4, "state": "cancelled"}).encode())
    first, too_new, no_filter, retried = [r for _, r in parts.ledger.take()]
    assert sorted(first["ids"]) == mail and first["count"] == 3
    assert too_new["count"] == 0  # submitted just now
    assert (no_filter["ok"], no_filter["code"]) == (False, "bad_request")
    assert sorted(retried["ids"]) == mail and all(job(parts, i).state == JobState.QUEUED for i in mail + other)
    a.close()
    b.close()


def test_the_best_priority_goes_first_then_the_oldest_across_queues(parts: Parts) -> None:
    low, high, other = submit(parts, {"task": "t", "priority": 1}, {"task": "t", "priority": 5},
                              {"task": "t", "queue": "other", "priority": 5})
    order = [parts.jobs.pop_ready(["default", "other"]) for _ in range(3)]
    assert [j.id for j in order if j] == [high, other, low]


def test_a_store_rebuilt_table_has_the_same_jobs_and_counts(parts: Parts) -> None:
    ids = submit(parts, {"task": "t"}, {"task": "t", "delay": 60}, {"task": "t"})
    parts.jobs.assign(job(parts, ids[0]), "1")
    parts.store.commit()
    before = (dict(parts.jobs.counts), sorted(parts.jobs.jobs))
    parts.jobs.load()
    assert (dict(parts.jobs.counts), sorted(parts.jobs.jobs)) == before
    assert parts.jobs.counts["delayed"] == 1 and parts.jobs.counts["assigned"] == 1


# ---- the fleet and its fence --------------------------------------------------------------------------------

def test_a_job_not_reported_before_the_fence_is_lost_and_its_late_result_ignored(parts: Parts) -> None:
    parts.start_worker("1")
    assert parts.fleet.workers["1"].state == "live"
    (jid,) = submit(parts, {"task": "t"})
    parts.dispatcher.assign(0.0)
    assert parts.dispatcher.send() is False
    sent = parts.inbox_messages("1")
    assert isinstance(sent[0], protocol.Jobs) and protocol.unpack_jobs(sent[0])[0].id == jid
    parts.worker_says(protocol.Heartbeat("1", 200, ["default"], 8, 0))  # a new pid: the worker restarted
    w = parts.fleet.workers["1"]
    assert w.state == "syncing" and job(parts, jid).state == JobState.ASSIGNED
    (sync,) = parts.inbox_messages("1")
    assert isinstance(sync, protocol.Sync)
    parts.worker_says(protocol.Synced("1", sync.token - 1))  # an old fence changes nothing
    assert w.state == "syncing"
    parts.worker_says(protocol.Synced("1", sync.token))
    j = job(parts, jid)
    assert w.state == "live" and j.state == JobState.FAILED and not w.assigned  # waits for its backoff
    assert j.error == ("worker 1 lost while running attempt 1 of 2 (the worker restarted: pid 100 is gone, "
                       "pid 200 took its place)")
    parts.result(_copy(j, worker="1", attempts=1))
    assert job(parts, jid).state == JobState.FAILED  # the old attempt's result came too late


def _result(j: JobRecord, ok: bool, error: str = "") -> protocol.Result:
    return protocol.Result(j.worker or "", j.id, j.attempts, ok, "out" if ok else "", error, 0.01, 0.0, {})


def _copy(j: JobRecord, **changes: object) -> JobRecord:
    fields = {name: getattr(j, name) for name in JobRecord.__dataclass_fields__}
    return JobRecord(**{**fields, **changes})


def test_a_result_ahead_of_the_fence_counts_and_the_job_is_done_once(parts: Parts) -> None:
    parts.start_worker("1")
    (jid,) = submit(parts, {"task": "t"})
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    parts.worker_says(protocol.Bye("1", 100))  # stopping: fenced as it leaves
    parts.result(job(parts, jid))
    (sync,) = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced("1", sync.token))
    assert job(parts, jid).state == JobState.DONE and job(parts, jid).result == "out"
    assert parts.fleet.workers["1"].state == "stopped" and parts.fleet.workers["1"].done == 1


def test_a_worker_silent_past_its_lease_is_lost_and_so_is_the_attempt_of_its_job(parts: Parts) -> None:
    parts.start_worker("1", now=100.0)
    (jid,) = submit(parts, {"task": "t"})
    parts.dispatcher.assign(100.0)
    parts.fleet.check_leases(100.0 + parts.cfg.host.lease - 0.1)
    assert parts.fleet.workers["1"].state == "live"
    parts.fleet.check_leases(100.0 + parts.cfg.host.lease + 0.1)
    j = job(parts, jid)
    assert parts.fleet.workers["1"].state == "lost" and j.state == JobState.FAILED
    assert j.attempts == 1 and j.error is not None and "silent past the lease of 10s" in j.error


def test_a_job_that_kills_its_worker_every_time_ends_dead(parts: Parts) -> None:
    finals: list[int] = []
    parts.jobs.on_final = lambda j: finals.append(j.id)
    (jid,) = submit(parts, {"task": "t"})
    for attempt, pid in ((1, 101), (2, 102)):  # retries = 1: two attempts
        parts.start_worker("1", pid=pid)
        j = job(parts, jid)
        j.run_at = 0.0
        parts.jobs.delayed[:] = [(0.0, jid)] if j.state == JobState.FAILED else []
        parts.jobs.promote_due()
        parts.dispatcher.assign(0.0)
        assert j.state == JobState.ASSIGNED and j.attempts == attempt
        parts.inbox_messages("1")
        parts.worker_says(protocol.Hello("1", pid + 100, ["default"], 8))  # the job killed it: a new worker
        (sync,) = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Sync)]
        parts.worker_says(protocol.Synced("1", sync.token))
    j = job(parts, jid)
    assert (j.state, j.attempts) == (JobState.DEAD, 2) and finals == [jid]
    assert j.error is not None and j.error.startswith("worker 1 lost while running attempt 2 of 2 (the worker "
                                                      "restarted")


def test_malformed_and_unexpected_messages_are_counted_and_dropped(parts: Parts) -> None:
    parts.mq.send(b"\x01Jnot json", 0)
    parts.mq.send(protocol.encode(protocol.Sync(1)), 0)  # a host message on the host's queue
    parts.mq.send(protocol.encode(protocol.Hello("../x", 1, [], 1)), 0)
    parts.fleet.intake(0.0)
    assert parts.fleet.malformed.total == 3 and not parts.fleet.workers


# ---- the dispatcher ---------------------------------------------------------------------------------------

def test_a_fast_task_goes_to_one_worker_in_a_batch_and_a_slow_one_round_robin(parts: Parts) -> None:
    for instance in ("1", "2", "3"):
        parts.start_worker(instance, queues=("default", "slowq"))
    parts.dispatcher.timed("t", 0.0001)
    submit(parts, *[{"task": "t"}] * 4)
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    got = {i: [j.id for m in parts.inbox_messages(i) if isinstance(m, protocol.Jobs) for j in protocol.unpack_jobs(m)]
           for i in ("1", "2", "3")}
    assert sorted(len(v) for v in got.values()) == [0, 0, 4], got  # one wake-up for the four
    for instance in ("1", "2", "3"):
        for job_id in list(parts.fleet.workers[instance].assigned):
            parts.result(job(parts, job_id))
    slow = submit(parts, *[{"task": "slow"}] * 3)  # never timed: not known to be fast
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    assert sorted(job(parts, s).worker or "" for s in slow) == ["1", "2", "3"]


def test_a_full_inbox_gets_its_jobs_back_and_its_worker_rests(parts: Parts) -> None:
    parts.start_worker("1", prefetch=1)
    parts.inboxes["1"].send(b"filler", 0)
    parts.inboxes["1"].send(b"filler", 0)  # depth 2: full
    (jid,) = submit(parts, {"task": "t"})
    before = time.monotonic()
    parts.dispatcher.assign(before)
    assert parts.dispatcher.send() is True
    j, w = job(parts, jid), parts.fleet.workers["1"]
    assert (j.state, j.attempts, w.assigned) == (JobState.QUEUED, 0, set())
    assert w.blocked_until >= before + BLOCKED_BACKOFF and parts.fleet.dispatchable(before) == []


def test_large_jobs_are_split_into_messages_within_the_size_limit(parts: Parts) -> None:
    parts.start_worker("1")
    parts.dispatcher.timed("t", 0.0001)
    ids = submit(parts, *[{"task": "t", "args": ["x" * 3000]} for _ in range(5)])
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    data = []
    while (raw := parts.inboxes["1"].receive()) is not None:
        data.append(raw)
    assert all(len(d) <= parts.cfg.mqueue.max_message_size for d in data) and len(data) == 3
    assert [j.id for d in data for j in protocol.unpack_jobs(protocol.decode(d))] == ids  # type: ignore[arg-type]


# ---- waiters ----------------------------------------------------------------------------------------------

def test_a_waiter_gets_the_finished_job_and_another_times_out(parts: Parts) -> None:
    parts.start_worker("1")
    a, b = socket.socketpair()
    conn = Conn(a, 1000)
    done_id, slow_id = submit(parts, {"task": "t"}, {"task": "t"})
    for rid, (jid, timeout) in enumerate(((done_id, 60), (slow_id, 5))):
        parts.requests.handle(conn, json.dumps({"op": "wait", "rid": rid, "id": jid, "timeout": timeout}).encode())
    assert parts.ledger.take() == [] and parts.waiters.next_deadline() is not None
    parts.dispatcher.assign(0.0)
    parts.result(job(parts, done_id))
    (reply,) = [r for _, r in parts.ledger.take()]
    assert reply["rid"] == 0 and reply["job"]["state"] == "done"
    parts.waiters.expire(time.monotonic() + 5.1)
    (reply,) = [r for _, r in parts.ledger.take()]
    assert (reply["rid"], reply["code"]) == (1, "timeout") and not parts.waiters.waiters
    a.close()
    b.close()


def test_a_wait_for_many_answers_once_all_finished_or_at_its_timeout_with_those_pending(parts: Parts) -> None:
    parts.start_worker("1")
    parts.dispatcher.timed("t", 0.001)  # a fast task: worker 1 takes them all
    a, b = socket.socketpair()
    conn = Conn(a, 1000)
    ids = submit(parts, *[{"task": "t"} for _ in range(3)])
    for rid, timeout in ((0, 60), (1, 5)):
        parts.requests.handle(conn, json.dumps({"op": "wait", "rid": rid, "ids": ids, "timeout": timeout}).encode())
    assert parts.ledger.take() == []
    parts.dispatcher.assign(0.0)
    parts.result(job(parts, ids[0]))
    parts.result(job(parts, ids[1]))
    assert parts.ledger.take() == []  # one answer per request, when all have finished
    parts.waiters.expire(time.monotonic() + 5.1)
    (reply,) = [r for _, r in parts.ledger.take()]
    assert reply["rid"] == 1 and [j["id"] for j in reply["jobs"]] == ids[:2] and reply["pending"] == [ids[2]]
    assert not parts.ledger.acknowledging()  # taken: nothing left to make durable
    parts.result(job(parts, ids[2]))
    (reply,) = [r for _, r in parts.ledger.take()]
    assert reply["rid"] == 0 and [j["id"] for j in reply["jobs"]] == ids and reply["pending"] == []
    assert not parts.waiters.waiters and parts.waiters.waiting == 0  # the timed-out one left no entry behind
    a.close()
    b.close()


def test_a_failed_commit_turns_the_submit_reply_into_a_refusal_and_drops_its_waiter(parts: Parts) -> None:
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, 1000), json.dumps({"op": "submit", "rid": 7, "jobs": [{"task": "t"}],
                                                     "wait_for": 10}).encode())
    parts.store.rollback()
    parts.requests.undo(parts.store.next_id, "store write failed: disk full")
    (reply,) = [r for _, r in parts.ledger.take()]
    assert (reply["rid"], reply["ok"], reply["code"]) == (7, False, "unavailable")
    assert not parts.waiters.waiters and parts.waiters.waiting == 0
    a.close()
    b.close()


# ---- the control socket -----------------------------------------------------------------------------------

@pytest.fixture
def served() -> Iterator[tuple[Server, Conn, socket.socket, list[bytes]]]:
    sel = selectors.DefaultSelector()
    lines: list[bytes] = []
    import logging
    server = Server(sel, lambda conn, line: lines.append(line), lambda conn: None, Burst(logging.getLogger("test")))
    a, b = socket.socketpair()
    conn = server.adopt(a, uid=1000)
    yield server, conn, b, lines
    b.close()
    sel.close()


def _turn(server: Server, timeout: float = 0.5) -> None:
    for key, mask in server.sel.select(timeout):
        key.data(mask)


def test_lines_are_cut_where_they_end_whatever_the_chunks(served: tuple[Server, Conn, socket.socket, list[bytes]]
                                                          ) -> None:
    server, _conn, peer, lines = served
    peer.sendall(b'{"op":"ping"}\n{"op":')
    _turn(server)
    assert lines == [b'{"op":"ping"}']
    peer.sendall(b'"status"}\n\n')
    _turn(server)
    assert lines == [b'{"op":"ping"}', b'{"op":"status"}', b""]


def test_a_request_over_the_limit_is_refused_and_the_connection_closed(
        served: tuple[Server, Conn, socket.socket, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    server, conn, peer, lines = served
    monkeypatch.setattr(control, "MAX_LINE", 1000)
    peer.sendall(b"x" * 1500)
    _turn(server)
    assert conn.closed and lines == []
    peer.settimeout(2)
    reply = json.loads(peer.recv(4096))
    assert (reply["code"], reply["error"]) == ("bad_request", "request too long")


def test_a_reply_larger_than_the_socket_buffer_waits_for_room(
        served: tuple[Server, Conn, socket.socket, list[bytes]]) -> None:
    server, conn, peer, _lines = served
    big = control.encode({"ok": True, "text": "y" * 4_000_000})
    server.send(conn, big)
    assert conn.writing and conn.wbuf  # the rest waits; the selector now watches for room
    received = bytearray()
    peer.settimeout(2)
    while len(received) < len(big):
        received += peer.recv(1 << 20)
        _turn(server, 0.1)
    assert bytes(received) == big and not conn.wbuf and not conn.writing


def test_a_job_lost_with_a_worker_goes_to_another_one_next_if_there_is_one(parts: Parts) -> None:
    parts.start_worker("1")
    parts.start_worker("2")
    (jid,) = submit(parts, {"task": "t"})
    parts.dispatcher.assign(0.0)
    assert job(parts, jid).worker == "1"  # the first worker in order
    parts.inbox_messages("1")
    parts.worker_says(protocol.Hello("1", 555, ["default"], 8))  # it died with the job
    (sync,) = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced("1", sync.token))
    j = job(parts, jid)
    j.run_at = 0.0
    parts.jobs.delayed[:] = [(0.0, jid)]
    parts.jobs.promote_due()
    parts.dispatcher.assign(0.0)
    assert (j.state, j.worker, j.attempts) == (JobState.ASSIGNED, "2", 2)  # not back to the worker it killed


# ---- queues: pause and resume; unique jobs --------------------------------------------------------------------

def test_a_paused_queue_takes_submits_dispatches_nothing_and_stays_paused_in_the_store(parts: Parts,
                                                                                       tmp_path: Path) -> None:
    parts.start_worker("1", queues=("default", "other"))
    assert parts.queues.pause("default", True) and not parts.queues.pause("default", True)
    paused_id, other_id = submit(parts, {"task": "t"}, {"task": "t", "queue": "other"})
    parts.dispatcher.assign(0.0)
    assert job(parts, paused_id).state == JobState.QUEUED and job(parts, other_id).state == JobState.ASSIGNED
    parts.store.commit()
    listing = {q["queue"]: q for q in parts.queues.listing()}
    assert listing["default"]["paused"] and listing["default"]["states"] == {"queued": 1}
    assert listing["default"]["workers"] == ["1"] and listing["other"]["states"] == {"assigned": 1}
    parts.queues.load()  # as after a restart: from the store
    assert parts.queues.paused == {"default"}
    assert parts.queues.pause("default", False)
    parts.dispatcher.assign(0.0)
    assert job(parts, paused_id).state == JobState.QUEUED  # worker 1 holds a job of a task not known to be fast
    parts.result(job(parts, other_id))
    parts.dispatcher.assign(0.0)
    assert job(parts, paused_id).state == JobState.ASSIGNED


def _steer(parts: Parts, op: str, queue: str) -> dict[str, object]:
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, uid=0), json.dumps({"op": op, "rid": 1, "queue": queue}).encode())
    ((_, reply),) = parts.ledger.take()
    a.close()
    b.close()
    return reply


def test_only_a_queue_the_configuration_a_worker_or_a_job_names_may_be_paused(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[worker]\nqueues = ["default", "w"]\n'
                                           '[worker.2]\nqueues = ["w2"]\n[queues.limited]\nconcurrency = 1\n'
                                           '[exchanges.x]\nbindings = [{ queue = "bound" }]\n'
                                           '[tasks.s]\nhandler = "echo"\nqueue = "taskq"\n'
                                           '[schedules.n]\nevery = "1h"\ntask = "s"\nqueue = "schedq"\n')
    try:
        refused = _steer(parts, "pause", "nosuch")
        assert (refused["ok"], refused["code"]) == (False, "not_found") and "no queue nosuch" in str(refused["error"])
        assert "nosuch" not in parts.queues.paused and _steer(parts, "resume", "nosuch")["code"] == "not_found"
        parts.start_worker("9", queues=("live",))
        (jid,) = submit(parts, {"task": "t", "queue": "jobs"})
        named = ("default", "w", "w2", "limited", "bound", "taskq", "schedq", "live", "jobs")
        assert [_steer(parts, "pause", q)["paused"] for q in named] == [True] * len(named)
        parts.jobs.cancel(job(parts, jid))
        parts.store.commit()
        parts.jobs.load()  # the job is in the store only now: its queue is still named
        assert _steer(parts, "pause", "jobs")["ok"]
    finally:
        parts.close()


def test_a_paused_queue_no_longer_named_may_be_resumed_and_is_then_listed_no_more(parts: Parts) -> None:
    parts.queues.pause("gone", True)  # as a pause from before its name left the configuration
    parts.store.commit()
    assert [q["paused"] for q in parts.queues.listing() if q["queue"] == "gone"] == [True]
    assert _steer(parts, "pause", "gone")["ok"]  # (paused already: nothing changes)
    reply = _steer(parts, "resume", "gone")
    assert (reply["ok"], reply["paused"], reply["changed"]) == (True, False, True)
    assert "gone" not in [q["queue"] for q in parts.queues.listing()]
    parts.store.commit()
    parts.queues.load()  # as after a restart
    assert "gone" not in [q["queue"] for q in parts.queues.listing()]


def test_a_queue_no_live_worker_serves_is_warned_of_once_and_listed_as_unserved(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    parts.start_worker("1")
    submit(parts, {"task": "t", "queue": "defualt"})
    submit(parts, {"task": "t", "queue": "defualt"})
    warnings = [r.getMessage() for r in caplog.records if "no live worker serves it" in r.getMessage()]
    assert warnings == [warnings[0]] and warnings[0].startswith("queue defualt:")
    listing = {q["queue"]: q for q in parts.queues.listing()}
    assert listing["defualt"]["unserved"] and listing["defualt"]["workers"] == []
    assert not listing["default"]["unserved"]


def test_a_unique_key_returns_the_open_job_and_is_free_again_once_it_finished(parts: Parts) -> None:
    parts.start_worker("1")
    a, b = socket.socketpair()
    conn = Conn(a, 1000)
    for rid in (1, 2):  # the second submit coalesces: both wait for the one job
        parts.requests.handle(conn, json.dumps({"op": "submit", "rid": rid, "wait_for": 60,
                                                "jobs": [{"task": "t", "unique": "k"}]}).encode())
    first, second = [r for _, r in parts.ledger.take()]
    assert first["ids"] == second["ids"] and second["existing"] == first["ids"] and "existing" not in first
    (jid,) = first["ids"]
    assert parts.jobs.counts["queued"] == 1
    parts.dispatcher.assign(0.0)
    parts.result(job(parts, jid))
    answers = [r for _, r in parts.ledger.take()]
    assert [(r["rid"], r["job"]["id"]) for r in answers] == [(1, jid), (2, jid)]  # the same result for both
    (again,) = submit(parts, {"task": "t", "unique": "k"})
    assert again != jid and job(parts, again).unique_key == "k"
    parts.store.commit()
    parts.jobs.load()  # as after a restart: the key is held by the open job in the store
    assert parts.jobs.holder("k") is not None and submit(parts, {"task": "t", "unique": "k"}) == [again]
    a.close()
    b.close()


def test_a_task_with_unique_true_coalesces_on_its_name_and_args(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "state", '[tasks.report]\nhandler = "echo"\nunique = true\n')
    try:
        first = submit(parts, {"task": "report", "args": ["daily"]}, {"task": "report", "args": ["daily"]},
                       {"task": "report", "args": ["weekly"]})
        assert first[0] == first[1] != first[2] and parts.jobs.counts["queued"] == 2
    finally:
        parts.close()


def test_a_queue_s_limits_hold_its_dispatch_back_until_a_job_ends_or_its_rate_allows(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[queues.default]\nconcurrency = 2\n'
                                           '[queues.slow]\nrate = "2/s"\n')
    try:
        parts.start_worker("1", queues=("default", "slow"))
        parts.start_worker("2", queues=("default", "slow"))
        parts.dispatcher.timed("t", 0.001)  # a fast task: a worker may hold more than one
        ids = submit(parts, *[{"task": "t"} for _ in range(4)])
        slow = submit(parts, *[{"task": "t", "queue": "slow"} for _ in range(3)])
        parts.dispatcher.assign(10.0)
        running = [i for i in ids if job(parts, i).state == JobState.ASSIGNED]
        assert len(running) == 2 and [job(parts, i).state for i in slow].count(JobState.ASSIGNED) == 1
        parts.dispatcher.assign(10.2)  # neither limit allows more yet
        assert parts.jobs.counts["assigned"] == 3 and parts.queues.next_wakeup(10.2) == pytest.approx(0.3)
        parts.result(job(parts, running[0]))
        parts.dispatcher.assign(10.5)  # a slot and a token
        assert parts.jobs.running_in["default"] == 2 and parts.jobs.running_in["slow"] == 2
        parts.store.commit()
        parts.jobs.load()  # rebuilt from the store, the running counts too
        assert parts.jobs.running_in == {"default": 2, "slow": 2}
    finally:
        parts.close()


# ---- schedules ----------------------------------------------------------------------------------------------

def _scheduler(parts: Parts, toml: str, now: float) -> Scheduler:
    cfg = configload.load(str(_write(parts, toml)))
    scheduler = Scheduler(cfg, parts.store, parts.jobs, parts.admission.submit_internal, parts.fleet.logger)
    scheduler.load(now)
    return scheduler


def _write(parts: Parts, toml: str) -> Path:
    path = Path(parts.store.path).parent / "schedules.toml"
    path.write_text(f'[host]\nstate_dir = "{Path(parts.store.path).parent}"\n[tasks."#"]\nhandler = "echo"\n{toml}')
    return path


def _runs_of(parts: Parts, name: str) -> list[float]:
    jobs = parts.jobs.query(None, None, "report", 1000)
    return sorted(json.loads(j.payload_json or "{}")["at"] for j in jobs if name in (j.payload_json or ""))


@pytest.mark.parametrize(("catch_up", "fired"), [("none", []), ("last", [1030.0]), ("all", [1010.0, 1020.0, 1030.0])])
def test_runs_missed_while_the_host_was_down_follow_catch_up(parts: Parts, catch_up: str, fired: list[float]) -> None:
    toml = f'[schedules.s]\nevery = "10s"\ntask = "report"\ncatch_up = "{catch_up}"\noverlap = true\n'
    _scheduler(parts, toml, 1000.0)  # first seen at 1000: first run due at 1010
    parts.store.commit()
    later = _scheduler(parts, toml, 1035.0)  # "restarted" at 1035: 1010, 1020, 1030 were missed
    later.fire_due(1035.0, 1035.0)
    assert _runs_of(parts, "s") == fired
    later.fire_due(1040.0, 1040.0)  # from now on, every run
    assert _runs_of(parts, "s") == [*fired, 1040.0] and later.next["s"] == 1050.0
    parts.store.commit()
    assert parts.store.schedules()["s"][0] == 1040.0


def test_catch_up_all_without_overlap_submits_every_missed_run_as_one_batch_with_one_line(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    """Trial E's finding 4: the oldest missed run was submitted, and each later one skipped (with a line each)
    since that job was still queued: neither "all" nor "last"."""
    toml = '[schedules.s]\nevery = "10s"\ntask = "report"\ncatch_up = "all"\n'
    _scheduler(parts, toml, 1000.0)
    parts.store.commit()
    later = _scheduler(parts, toml, 1035.0)  # 1010, 1020, 1030 missed
    later.fire_due(1040.0, 1040.0)  # and 1040 is due
    assert _runs_of(parts, "s") == [1010.0, 1020.0, 1030.0, 1040.0] and "skipped" not in caplog.text
    later.fire_due(1050.0, 1050.0)  # the batch's jobs are still queued: the next run is skipped, in one line
    assert _runs_of(parts, "s") == [1010.0, 1020.0, 1030.0, 1040.0]
    assert caplog.text.count("skipped") == 1 and "the run of " in caplog.text
    parts.store.commit()
    again = _scheduler(parts, toml, 1095.0)  # down again, with job 1040's still queued: the batch is skipped
    again.fire_due(1095.0, 1095.0)
    assert caplog.text.count("skipped") == 2 and "4 runs, " in caplog.text and "are skipped: job" in caplog.text


def test_a_schedules_lines_carry_its_name_task_and_queue_as_journal_fields(parts: Parts,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    toml = '[schedules.s]\nevery = "10s"\ntask = "report"\nqueue = "reports"\ncatch_up = "none"\n'
    _scheduler(parts, toml, 1000.0)
    parts.store.commit()
    later = _scheduler(parts, toml, 1035.0)
    later.fire_due(1040.0, 1040.0)  # 3 missed, none submitted, 1040 submitted
    later.fire_due(1050.0, 1050.0)  # skipped: the job of 1040 is open
    lines = [r for r in caplog.records if r.getMessage().startswith("schedule s: ")]
    assert len(lines) == 2 and "missed" in lines[0].getMessage() and "skipped" in lines[1].getMessage()
    for r in lines:
        assert (r.TQ_SCHEDULE, r.TQ_TASK, r.TQ_QUEUE) == ("s", "report", "reports"), r.getMessage()


def test_without_overlap_a_run_is_skipped_while_the_last_one_is_open(parts: Parts,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    scheduler = _scheduler(parts, '[schedules.s]\nevery = "10s"\ntask = "report"\n', 1000.0)
    scheduler.fire_due(1010.0, 1010.0)
    scheduler.fire_due(1020.0, 1020.0)  # the job of 1010 is still queued
    assert _runs_of(parts, "s") == [1010.0] and "is skipped: job" in caplog.text and "overlap = false" in caplog.text
    (listed,) = scheduler.public()  # the last run is 1020's, skipped: not shown with the job of 1010 as its own
    assert listed["last_run"] == 1020.0 and listed["next_run"] == 1030.0
    assert (listed["last_job"], listed["last_state"], listed["last_error"]) == (None, None, None)
    assert listed["last_skipped"] == "job 1 of the run before was still queued (overlap = false)"
    parts.store.commit()
    restarted = _scheduler(parts, '[schedules.s]\nevery = "10s"\ntask = "report"\ncatch_up = "none"\n', 1045.0)
    (listed,) = restarted.public()  # (after a restart too)
    assert listed["last_skipped"] == "job 1 of the run before was still queued (overlap = false)"
    restarted.fire_due(1045.0, 1045.0)  # 1030 and 1040 missed, not caught up; and job 1 is still open
    (listed,) = restarted.public()
    assert listed["last_run"] == 1040.0 and listed["last_skipped"] == ('missed while tq-host was down '
                                                                       '(catch_up = "none")')
    restarted.fire_due(1050.0, 1050.0)
    assert _runs_of(parts, "s") == [1010.0] and "still queued" in restarted.public()[0]["last_skipped"]


def test_a_run_that_is_refused_shows_as_failed_with_its_time_and_error_not_an_old_job(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    toml = '[schedules.s]\nevery = "10s"\ntask = "report"\noverlap = true\nargs = ["{}"]\n'
    scheduler = _scheduler(parts, toml.format("small"), 1000.0)
    scheduler.fire_due(1010.0, 1010.0)
    (first,) = [j.id for j in parts.jobs.query(None, None, "report", 10)]
    scheduler.configure(configload.load(str(_write(parts, toml.format("x" * 9000)))), 1015.0)  # a reload
    scheduler.fire_due(1020.0, 1020.0)  # refused: too large for mqueue.max_message_size
    assert _runs_of(parts, "s") == [1010.0] and "the run of" in caplog.text and "was not submitted" in caplog.text
    (listed,) = scheduler.public()
    assert (listed["last_run"], listed["last_job"], listed["last_state"]) == (1020.0, None, None)
    assert "too large" in listed["last_error"] and listed["next_run"] == 1030.0
    parts.store.commit()
    (again,) = _scheduler(parts, toml.format("x" * 9000), 1025.0).public()  # after a restart: the same
    assert again["last_error"] == listed["last_error"] and again["last_run"] == 1020.0 and again["last_job"] is None
    scheduler.configure(configload.load(str(_write(parts, toml.format("small")))), 1025.0)
    scheduler.fire_due(1030.0, 1030.0)
    (listed,) = scheduler.public()
    assert listed["last_error"] is None and listed["last_job"] not in (None, first) and listed["last_run"] == 1030.0
    parts.store.commit()
    assert parts.store.schedules()["s"][2] is None


def test_a_schedule_whose_times_change_at_a_reload_or_that_comes_back_counts_from_then(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    """Trial E's finding 2: every = "1h" changed to "5s" fired each 5 s run since the last hourly one, at once."""
    caplog.set_level(logging.INFO)
    toml = '[schedules.s]\nevery = "{}"\ntask = "report"\noverlap = true\n'
    scheduler = _scheduler(parts, toml.format("1h"), 1000.0)
    scheduler.fire_due(4600.0, 4600.0)
    scheduler.configure(configload.load(str(_write(parts, toml.format("5s")))), 4620.0)  # a reload
    assert scheduler.next["s"] == 4625.0 and "schedule s: changed: it counts from now" in caplog.text
    scheduler.fire_due(4625.0, 4625.0)
    assert _runs_of(parts, "s") == [4600.0, 4625.0]
    scheduler.configure(configload.load(str(_write(parts, '[schedules.t]\nevery = "1h"\ntask = "report"\n'))),
                        4630.0)  # s removed ...
    scheduler.configure(configload.load(str(_write(parts, toml.format("5s")))), 4700.0)  # ... and back
    assert scheduler.next["s"] == 4705.0 and "schedule s: back in the configuration: it counts from now" in caplog.text
    scheduler.fire_due(4705.0, 4705.0)
    assert _runs_of(parts, "s") == [4600.0, 4625.0, 4705.0]
    parts.store.commit()
    assert _scheduler(parts, toml.format("5s"), 4706.0).next["s"] == 4710.0  # as the store keeps it


@pytest.mark.parametrize(("catch_up", "fired"), [("none", []), ("last", [1100.0]),
                                                 ("all", [1020.0 + 10 * k for k in range(9)])])
def test_runs_in_a_step_forward_of_the_clock_follow_catch_up_and_a_step_back_keeps_an_interval_running(
        parts: Parts, caplog: pytest.LogCaptureFixture, catch_up: str, fired: list[float]) -> None:
    toml = f'[schedules.s]\nevery = "10s"\ntask = "report"\ncatch_up = "{catch_up}"\noverlap = true\n'
    scheduler = _scheduler(parts, toml, 1000.0)
    scheduler.fire_due(1010.0, 50.0)
    scheduler.fire_due(1105.0, 51.0)  # the wall clock jumped 94 s in a second
    assert _runs_of(parts, "s") == [1010.0, *fired] and "the clock stepped forward 94 s" in caplog.text
    scheduler.fire_due(1110.0, 56.0)  # on time again
    assert _runs_of(parts, "s") == [1010.0, *fired, 1110.0]
    scheduler.fire_due(500.0, 57.0)  # an NTP step back of ~10 minutes
    assert "the clock stepped back 611 s" in caplog.text and scheduler.next["s"] == 510.0
    scheduler.fire_due(510.0, 67.0)
    assert _runs_of(parts, "s")[0] == 510.0


def test_a_schedule_whose_next_run_cannot_be_computed_is_disabled_and_logged_not_raised(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    """(The configuration check refuses a cron expression that never fires: this one got past it.)"""
    toml = '[schedules.s]\nevery = "10s"\ntask = "report"\n[schedules.feb]\ncron = "@daily"\ntask = "report"\n'
    cfg = configload.load(str(_write(parts, toml)))
    feb = dataclasses.replace(cfg.schedules["feb"], cron="0 0 30 2 *")
    cfg = dataclasses.replace(cfg, schedules={**cfg.schedules, "feb": feb})
    scheduler = Scheduler(cfg, parts.store, parts.jobs, parts.admission.submit_internal, parts.fleet.logger)
    scheduler.load(1000.0)  # (this raised CroniterBadDateError)
    scheduler.rolled_back(1005.0)  # (a failed commit: the schedules are configured again, and it is not said again)
    scheduler.fire_due(1010.0, 1010.0)
    assert _runs_of(parts, "s") == [1010.0] and list(scheduler.next) == ["s"]
    assert caplog.text.count("schedule feb: disabled until the configuration changes: cannot compute") == 1
    listed = {s["name"]: s for s in scheduler.public()}
    assert listed["feb"]["next_run"] is None and "cannot compute" in listed["feb"]["disabled"]
    assert listed["s"]["disabled"] is None


# ---- chains, after, follow-ups ------------------------------------------------------------------------------

def _chain(parts: Parts, *specs: dict[str, object]) -> list[int]:
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, uid=1000), json.dumps({"op": "submit", "rid": 1, "jobs": list(specs),
                                                         "chain": True}).encode())
    ((_, reply),) = parts.ledger.take()
    a.close()
    b.close()
    assert reply["ok"], reply
    ids: list[int] = reply["ids"]
    return ids


def test_a_chain_step_starts_with_the_result_before_it_and_a_dead_step_cancels_the_rest(parts: Parts) -> None:
    parts.start_worker("1")
    a, b, c = _chain(parts, {"task": "t", "args": ["x"]}, {"task": "t", "retries": 0}, {"task": "t"})
    assert [job(parts, i).state for i in (a, b, c)] == ["queued", "deferred", "deferred"]
    assert (job(parts, b).parent, job(parts, c).parent) == (a, b)
    parts.dispatcher.assign(0.0)
    parts.result(job(parts, a), output="first result")
    assert job(parts, b).state == JobState.QUEUED and json.loads(job(parts, b).payload_json or "") == "first result"
    parts.store.commit()
    parts.jobs.load()  # as after a restart: c still waits for b
    assert job(parts, c).state == JobState.DEFERRED and parts.jobs.deferred[b] == [c]
    parts.dispatcher.assign(0.0)
    parts.result(job(parts, b), ok=False)  # retries = 0: dead
    assert job(parts, b).state == JobState.DEAD
    assert job(parts, c).state == JobState.CANCELLED
    assert job(parts, c).error == f"cancelled: job {b} before it in the chain is dead"
    parts.store.commit()
    assert parts.store.children(a) == [b] and parts.store.children(b) == [c]


def test_a_job_after_another_waits_for_it_and_is_refused_after_a_dead_one(parts: Parts) -> None:
    (first,) = submit(parts, {"task": "t"})
    (second,) = submit(parts, {"task": "t", "after": first, "args": ["mine"]})
    assert job(parts, second).state == JobState.DEFERRED
    parts.jobs.cancel(job(parts, first))
    assert job(parts, second).state == JobState.CANCELLED and f"job {first} it waited for is cancelled" in (
        job(parts, second).error or "")
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, 1000), json.dumps({"op": "submit", "rid": 2,
                                                     "jobs": [{"task": "t", "after": first}]}).encode())
    ((_, reply),) = parts.ledger.take()
    assert reply["code"] == "conflict" and "a job after it would never run" in reply["error"]
    a.close()
    b.close()


def test_on_success_and_on_failure_submit_a_follow_up_with_the_outcome(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[tasks.work]\nhandler = "echo"\n'
                                           'retries = 0\non_success = "notify"\non_failure = "alert"\n'
                                           '[tasks.notify]\nhandler = "echo"\non_success = "notify"\n')
    try:
        parts.start_worker("1")
        parts.dispatcher.timed("work", 0.001)  # a fast task: worker 1 takes both
        ok, bad = submit(parts, {"task": "work"}, {"task": "work"})
        parts.dispatcher.assign(0.0)
        parts.result(job(parts, ok), output="fine")
        parts.result(job(parts, bad), ok=False)
        follow = {j.task: j for j in parts.jobs.jobs.values() if j.task in ("notify", "alert")}
        assert json.loads(follow["notify"].payload_json or "") == {"id": ok, "task": "work", "state": "done",
                                                                  "result": "fine", "error": None}
        assert json.loads(follow["alert"].payload_json or "")["state"] == "dead" and follow["alert"].parent == bad
        parts.dispatcher.assign(0.0)
        parts.result(job(parts, follow["notify"].id))  # notify's own on_success: not for a follow-up (no loop)
        assert not [j for j in parts.jobs.jobs.values() if j.task == "notify"]
    finally:
        parts.close()


# ---- the assembly -----------------------------------------------------------------------------------------

# One valid request per operation, as tqctl sends it, and a field its reply must carry.
EVERY_OP: dict[str, tuple[dict[str, object], str]] = {
    "ping": ({}, "version"),
    "submit": ({"jobs": [{"task": "t", "args": ["x"]}]}, "ids"),
    "get": ({"id": 1}, "job"),
    "wait": ({"ids": [1], "timeout": 0}, "pending"),
    "list": ({"limit": 5}, "jobs"),
    "status": ({}, "states"),
    "workers": ({}, "workers"),
    "cancel": ({"id": 1}, "job"),
    "retry": ({"id": 1}, "job"),
    "pause": ({"queue": "default"}, "paused"),
    "resume": ({"queue": "default"}, "paused"),
    "queues": ({}, "queues"),
    "schedules": ({}, "schedules"),
    "events": ({"limit": 10}, "events"),
    "subscribe": ({"recent": 10}, "events"),
    "metrics": ({"format": "json"}, "metrics"),
    "forget_worker": ({"instance": "gone"}, "instance"),
    "token_create": ({"name": "ci", "user": "root"}, "token"),
    "token_list": ({}, "tokens"),
    "token_revoke": ({"name": "ci"}, "revoked"),
    "whoami": ({}, "may_steer"),
    "act_as": ({"token": "tq_known"}, "user"),  # the last: the connection is the token user's from then on
}


def test_every_operation_answers_through_the_assembly_tq_host_uses(tmp_path: Path) -> None:
    """tests/parts.py assembles the host with tq-host's own function: each op answers as it does in tq-host
    (wired by hand, the parts once answered `events` with an internal error and `schedules` with nothing)."""
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n'
                                           '[schedules.nightly]\nevery = "1h"\ntask = "report"\n')
    parts.scheduler.load(time.time())
    parts.fleet.workers["gone"] = WorkerState("gone", state="stopped")  # for forget_worker
    parts.store.save_token("gw", tokens.digest("tq_known"), "root", False, 0.0, 0)  # for act_as
    parts.store.commit()
    parts.host.tokens.reload()
    assert set(EVERY_OP) == set(parts.requests.ops), "a new op needs a case here"
    a, b = socket.socketpair()
    try:
        conn = Conn(a, uid=0)
        for rid, (op, (fields, key)) in enumerate(EVERY_OP.items()):
            parts.requests.handle(conn, json.dumps({"op": op, "rid": rid, **fields}).encode())
            parts.store.commit()
            parts.stream.committed()
            replies = [r for _c, r in parts.ledger.take() if r.get("rid") == rid]
            assert replies and replies[0]["ok"], (op, replies)
            assert key in replies[0], (op, replies[0])
            if op == "events":
                assert [e["event"] for e in replies[0]["events"]] == ["submitted", "cancelled", "retried"], replies[0]
            if op == "schedules":
                assert [s["name"] for s in replies[0]["schedules"]] == ["nightly"], replies[0]
    finally:
        a.close()
        b.close()
        parts.close()


def test_status_counts_a_syncing_worker_apart_from_the_live_and_the_lost(parts: Parts) -> None:
    parts.start_worker("1")
    parts.inboxes["2"] = parts.mailboxes.create_inbox("2", 9)
    parts.worker_says(protocol.Hello("2", 200, ["default"], 8))  # fenced: its Synced waits behind its job
    a, b = socket.socketpair()
    try:
        st = parts.host.snapshot.status(Conn(a, uid=0), 1, {})
    finally:
        a.close()
        b.close()
    assert (st["workers_live"], st["workers_syncing"], st["workers_known"]) == (1, 1, 2)


def test_a_fault_inside_tq_host_is_an_internal_error_not_a_bad_request(parts: Parts) -> None:
    def broken(conn: Conn, rid: object, req: dict[str, object]) -> dict[str, object]:
        raise KeyError("a bug")

    parts.requests.ops["status"] = broken
    a, b = socket.socketpair()
    try:
        parts.requests.handle(Conn(a, uid=0), b'{"op": "status", "rid": 7}')
        (reply,) = [r for _c, r in parts.ledger.take()]
        assert (reply["ok"], reply["code"], reply["rid"]) == (False, "internal", 7)
        assert "internal error in tq-host" in reply["error"]
    finally:
        a.close()
        b.close()


# ---- dispatch: sent ahead only where no worker is left idle ----------------------------------------------

def test_a_job_of_a_slow_or_unknown_task_goes_only_to_an_idle_worker(parts: Parts) -> None:
    parts.start_worker("1")
    parts.start_worker("2")
    a, b, c = submit(parts, {"task": "t"}, {"task": "t"}, {"task": "t"})
    parts.dispatcher.assign(0.0)
    assert [job(parts, i).state for i in (a, b, c)] == [JobState.ASSIGNED, JobState.ASSIGNED, JobState.QUEUED]
    assert {job(parts, a).worker, job(parts, b).worker} == {"1", "2"}
    parts.dispatcher.timed("t", 0.001)  # now known to be fast: it may wait in a busy worker's inbox
    parts.dispatcher.assign(0.0)
    assert job(parts, c).state == JobState.ASSIGNED


def test_a_worker_s_started_makes_an_assigned_job_running_from_the_time_it_gives(parts: Parts) -> None:
    parts.start_worker("1")
    (jid,) = submit(parts, {"task": "t"})
    parts.dispatcher.assign(0.0)
    j = job(parts, jid)
    assert j.state == JobState.ASSIGNED and j.public()["started_at"] is None  # (it holds the assignment's time)
    parts.started(j)
    assert (j.state, j.started_at, parts.fleet.workers["1"].running) == (JobState.RUNNING, 1.7e9, jid)
    parts.store.commit()
    stored = parts.store.get(jid)
    assert stored is not None and (stored.state, stored.started_at) == ("running", 1.7e9)
    parts.worker_says(protocol.Started("1", jid, 99, 1.0))  # not the attempt the host expects: nothing changes
    assert j.started_at == 1.7e9
    parts.result(j)
    assert j.state == JobState.DONE


def test_cancelling_an_assigned_job_ends_it_at_once_and_tells_its_worker_to_drop_it(parts: Parts) -> None:
    parts.start_worker("1")
    parts.dispatcher.timed("t", 0.001)  # a fast task: both wait on worker 1
    running, waiting = submit(parts, {"task": "t"}, {"task": "t"})
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    parts.inbox_messages("1")
    parts.started(job(parts, running))
    a, b = socket.socketpair()
    parts.requests.handle(Conn(a, 0), json.dumps({"op": "cancel", "rid": 1, "id": waiting}).encode())
    (reply,) = [r for _, r in parts.ledger.take()]
    assert reply["ok"] and reply["stopping"] is False
    j = job(parts, waiting)
    assert j.state == JobState.CANCELLED and j.error is not None and "before it started" in j.error
    assert [(m.id, m.attempt) for m in parts.inbox_messages("1") if isinstance(m, protocol.Cancel)] == [(waiting, 1)]
    w = parts.fleet.workers["1"]
    assert waiting in w.assigned  # its place in the inbox, until the worker says it dropped it
    parts.worker_says(protocol.Results("1", [[waiting, 1, False, "", "cancelled", 0.0, 0.0, {}]]))
    assert waiting not in w.assigned and j.state == JobState.CANCELLED
    assert job(parts, running).state == JobState.RUNNING
    a.close()
    b.close()


def test_the_queue_listing_counts_each_queue_s_states_and_finds_its_oldest_queued_job(parts: Parts) -> None:
    old, a1, a2, _b1 = submit(parts, {"task": "t", "queue": "b"}, {"task": "t", "queue": "a"},
                             {"task": "t", "queue": "a"}, {"task": "t", "queue": "b"})
    job(parts, old).created_at -= 100  # cancelled, then retried (back in the table after b1)
    job(parts, a1).created_at -= 10
    parts.jobs.cancel(job(parts, old))
    parts.jobs.retry(parts.store.get(old) or job(parts, old))
    parts.jobs.cancel(job(parts, a2))
    listing = {q["queue"]: q for q in parts.queues.listing()}
    assert listing["a"]["states"] == {"queued": 1} and listing["b"]["states"] == {"queued": 2}
    assert 9 < listing["a"]["oldest_queued_age"] < 11
    assert listing["b"]["oldest_queued_age"] < 1  # queued since its retry, not since its submit 100 s ago
    job(parts, old).run_at -= 50  # retried 50 s ago: b's oldest, found apart from the walk in id order
    assert 49 < next(q for q in parts.queues.listing() if q["queue"] == "b")["oldest_queued_age"] < 51
