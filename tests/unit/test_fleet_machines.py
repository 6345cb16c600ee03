"""tq-host's fleet and two workers of one name on two machines (cloned VMs, equal short host names): the second
is refused and told so, the holder keeps its jobs; a restart on the holder's machine, or a replacement machine
after the holder was lost, is adopted as before. In-process: tests/parts.py plays the workers."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from parts import Parts, make_parts
from tq import protocol
from tq.host.records import JobRecord
from tq.host.server import Conn
from tq.states import JobState
from tq.transport.machines import machine_id
from tq.worker import EXIT_REFUSED, Worker

NAME = "1@render-3"
HERE, THERE = "a" * 32, "b" * 32  # the machine ids of the holder's machine and of its clone


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state")
    yield p
    p.close()


def start(parts: Parts, pid: int = 100, machine: str = HERE, now: float = 0.0) -> None:
    """The holder says hello from its machine and answers the fence: it is live."""
    parts.inboxes.setdefault(NAME, parts.mailboxes.create_inbox(NAME, 9))
    parts.worker_says(protocol.Hello(NAME, pid, ["default"], 8, machine), now)
    (sync,) = [m for m in parts.inbox_messages(NAME) if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced(NAME, sync.token, machine), now)
    assert parts.fleet.workers[NAME].state == "live"


def submit(parts: Parts, count: int) -> list[int]:
    a, b = socket.socketpair()
    request = {"op": "submit", "rid": 1, "jobs": [{"task": "t"} for _ in range(count)]}
    parts.requests.handle(Conn(a, uid=1000), json.dumps(request).encode())
    replies = parts.ledger.take()
    a.close()
    b.close()
    ids: list[int] = replies[0][1]["ids"]
    return ids


def find(parts: Parts, job_id: int) -> JobRecord:
    found = parts.jobs.find(job_id)
    assert found is not None
    return found


def test_a_second_worker_of_the_name_from_another_machine_is_refused_once_and_the_holder_keeps_its_jobs(
        parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    start(parts)
    submit(parts, 3)
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    assert [m for m in parts.inbox_messages(NAME) if isinstance(m, protocol.Jobs)]
    w = parts.fleet.workers[NAME]
    held = set(w.assigned)
    assert held
    with caplog.at_level(logging.WARNING):
        parts.worker_says(protocol.Hello(NAME, 560, ["default"], 8, THERE), 0.5)
        for t in (1.0, 1.5, 2.0):  # its heartbeats, and the holder's between them
            parts.worker_says(protocol.Heartbeat(NAME, 560, ["default"], 8, 0, {}, THERE), t)
            parts.worker_says(protocol.Heartbeat(NAME, 100, ["default"], 8, 0, {}, HERE), t)
    assert (w.state, w.pid, w.machine) == ("live", 100, HERE)  # never fenced: the holder keeps its jobs
    assert w.assigned == held and all(find(parts, i).state == JobState.ASSIGNED for i in held)
    refusals = parts.inbox_messages(NAME)
    assert len(refusals) == 4 and all(m == refusals[0] for m in refusals)  # one for each of its messages
    refused = refusals[0]
    assert isinstance(refused, protocol.Refused) and (refused.pid, refused.machine) == (560, THERE)
    assert refused.reason == ('another worker is named 1@render-3 (pid 100, on another machine): give each machine '
                              'its own name ([transport] machine = "...")')
    warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every heartbeat
    assert "pid 560 of machine bbbbbbbbbbbb" in warnings[0] and "pid 100 of machine aaaaaaaaaaaa" in warnings[0]
    assert not [r for r in caplog.records if "is back" in r.getMessage() or "lost" in r.getMessage()]
    for i in held:  # the holder reports them: done once, first attempt
        parts.result(find(parts, i), now=2.5)
        assert (find(parts, i).state, find(parts, i).attempts) == (JobState.DONE, 1)


def test_a_fence_answered_by_the_refused_process_is_sent_again_for_the_holder(parts: Parts) -> None:
    start(parts)
    w = parts.fleet.workers[NAME]
    (jid,) = submit(parts, 1)
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    parts.inbox_messages(NAME)
    parts.worker_says(protocol.Hello(NAME, 100, ["default", "more"], 8, HERE), 1.0)  # a reload: fenced again
    (sync,) = [m for m in parts.inbox_messages(NAME) if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced(NAME, sync.token, THERE), 1.1)  # the clone took it from the shared inbox
    assert w.state == "syncing" and parts.jobs.jobs[jid].state == JobState.ASSIGNED  # nothing taken for lost
    (again,) = parts.inbox_messages(NAME)
    assert again == sync
    parts.result(parts.jobs.jobs[jid], now=1.2)
    parts.worker_says(protocol.Synced(NAME, sync.token, HERE), 1.3)
    assert w.state == "live" and find(parts, jid).state == JobState.DONE


def test_a_restart_on_the_same_machine_is_adopted_and_its_lost_job_counted(parts: Parts) -> None:
    start(parts)
    (jid,) = submit(parts, 1)
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    parts.inbox_messages(NAME)
    parts.worker_says(protocol.Heartbeat(NAME, 200, ["default"], 8, 0, {}, HERE), 1.0)  # a new pid, same machine
    w = parts.fleet.workers[NAME]
    assert (w.state, w.pid) == ("syncing", 200)
    (sync,) = parts.inbox_messages(NAME)
    parts.worker_says(protocol.Synced(NAME, sync.token, HERE), 1.1)
    j = parts.jobs.jobs[jid]
    assert w.state == "live" and j.state != JobState.ASSIGNED and j.error is not None
    assert "the worker restarted: pid 100 is gone, pid 200 took its place" in j.error


@pytest.mark.parametrize("gone", ["lost", "stopped", "silent"])
def test_the_name_from_another_machine_after_the_holder_is_gone_is_adopted(parts: Parts, gone: str) -> None:
    start(parts, now=100.0)
    w = parts.fleet.workers[NAME]
    later = 100.0 + parts.cfg.host.lease + 1.0
    if gone == "lost":
        parts.fleet.check_leases(later)
        assert w.state == "lost"
    elif gone == "stopped":
        parts.worker_says(protocol.Bye(NAME, 100), 101.0)
        (sync,) = parts.inbox_messages(NAME)
        parts.worker_says(protocol.Synced(NAME, sync.token, HERE), 101.0)
        assert w.state == "stopped"
    # ("silent": past the lease, not yet found lost by check_leases)
    parts.worker_says(protocol.Heartbeat(NAME, 560, ["default"], 8, 0, {}, THERE), later)
    assert (w.state, w.pid, w.machine) == ("syncing", 560, THERE)  # a replacement machine: fenced, adopted
    (sync,) = parts.inbox_messages(NAME)
    assert isinstance(sync, protocol.Sync)
    parts.worker_says(protocol.Synced(NAME, sync.token, THERE), later)
    assert w.state == "live"


def test_a_worker_that_says_no_machine_is_taken_as_before(parts: Parts) -> None:
    """A worker of the previous release: a new pid is a restart, whatever machine it runs on."""
    parts.inboxes[NAME] = parts.mailboxes.create_inbox(NAME, 9)
    parts.worker_says(protocol.Hello(NAME, 100, ["default"], 8))
    parts.worker_says(protocol.Heartbeat(NAME, 560, ["default"], 8, 0, {}, THERE), 0.5)
    w = parts.fleet.workers[NAME]
    assert (w.state, w.pid) == ("syncing", 560)
    assert not [m for m in parts.inbox_messages(NAME) if isinstance(m, protocol.Refused)]


def test_after_a_host_restart_the_machine_is_learnt_from_the_holder_s_heartbeat(parts: Parts) -> None:
    start(parts)
    w = parts.fleet.workers[NAME]
    w.machine = ""  # as recover() knows it: the store keeps no machine
    parts.worker_says(protocol.Heartbeat(NAME, 100, ["default"], 8, 0, {}, HERE), 1.0)
    assert w.machine == HERE
    parts.worker_says(protocol.Heartbeat(NAME, 560, ["default"], 8, 0, {}, THERE), 1.1)
    assert (w.state, w.pid) == ("live", 100)


def test_the_machine_id_comes_from_the_first_file_that_holds_one(tmp_path: Path) -> None:
    empty, boot = tmp_path / "machine-id", tmp_path / "boot_id"
    empty.write_text("\n")
    boot.write_text("b9139404-ab4b-4324-9e88-38f25d74a139\n")
    assert machine_id.__wrapped__((str(tmp_path / "none"), str(empty), str(boot))) == \
        "b9139404ab4b43249e8838f25d74a139"
    assert machine_id.__wrapped__((str(tmp_path / "none"),)) == ""
    assert machine_id() and machine_id() == machine_id()


def test_a_refused_worker_hands_back_the_jobs_it_took_says_why_and_exits(
        parts: Parts, signals: None, capfd: pytest.CaptureFixture[str]) -> None:
    """tq-worker in-process beside the host's parts, on the same memory mailboxes: it reads the inbox of a name
    held from another machine (HERE), takes the holder's jobs from it, is refused, and hands them back."""
    parts.inboxes["1"] = parts.mailboxes.create_inbox("1", parts.cfg.worker.prefetch + 1)
    parts.worker_says(protocol.Hello("1", 100, ["default"], 8, HERE))
    (sync,) = [m for m in parts.inbox_messages("1") if isinstance(m, protocol.Sync)]
    parts.worker_says(protocol.Synced("1", sync.token, HERE))
    ids = submit(parts, 3)
    parts.dispatcher.assign(0.0)
    parts.dispatcher.send()
    holder = parts.fleet.workers["1"]
    held = set(holder.assigned)
    assert held
    worker = Worker(parts.cfg, parts.cfg.files[0], "1", mailboxes=parts.mailboxes)
    try:
        worker.start()  # its hello: this process, this machine
        parts.fleet.intake(0.5)
        for _ in range(10):
            worker.step()
            if worker.exit_now:
                break
        assert worker.exit_now and worker.refusal.reason and not worker.local
        assert not worker.stop.bye_at  # a Bye would fence the holder
        parts.fleet.intake(0.6)  # its releases
    finally:
        for mailbox in (worker.inbox, worker.host_mailbox.held):
            if mailbox is not None:
                mailbox.close()
        os.close(worker.lock_fd)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("tq-worker@1: ")]
    assert lines[1:] == ['tq-worker@1: error: refused by tq-host: another worker is named 1 (pid 100, on another '
                         'machine): give each machine its own name ([transport] machine = "...")'], lines
    assert (holder.state, holder.pid, holder.machine) == ("live", 100, HERE) and not holder.assigned
    assert all(find(parts, i).state == JobState.QUEUED for i in held)  # handed back unrun: they run again
    assert {find(parts, i).state for i in ids} == {JobState.QUEUED} and EXIT_REFUSED == 78
