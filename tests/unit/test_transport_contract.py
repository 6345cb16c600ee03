"""What every transport promises the daemons (tq.transport.Mailboxes), one set of cases run against each back
end: POSIX queues (real ones, under a unique prefix, removed afterwards), the in-memory twin, and AMQP queues on
a real RabbitMQ (tests/broker.py; skipped loudly without one).

An AMQP message travels through the broker while the daemon's loop runs: before looking, a case calls
`delivered(mailbox, n)`, which for AMQP drives the loop until every send is confirmed and `n` messages wait in
`mailbox` (at once for the others)."""

from __future__ import annotations

import os
import select
import selectors
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import Broker, broker  # noqa: F401  (the fixture)
from tq import config, configload
from tq.transport import Mailbox, MailboxError, Mailboxes, posix
from tq.transport.amqp import AmqpMailboxes
from tq.transport.amqploop import AmqpLoop
from tq.transport.memory import MemoryMailboxes

INSTANCES = ("1", "2")  # the workers the cases make inboxes for


def _config(tmp_path: Path, extra: str = "") -> config.Config:
    path = tmp_path / "tq.toml"
    path.write_text(f'[mqueue]\nprefix = "/tqt-contract-{uuid.uuid4().hex[:8]}"\nmax_messages = 10\n'
                    f'max_message_size = 1024\n{extra}')
    return configload.load(str(path))


Delivered = Callable[[Mailbox, int], None]


@pytest.fixture
def delivered(mailboxes: Mailboxes) -> Delivered:
    """Wait until every send is confirmed and `n` messages wait in `mailbox` (AMQP; at once for the others)."""
    if not isinstance(mailboxes, AmqpMailboxes):
        return lambda _mailbox, _n: None
    amqp = mailboxes

    def wait(mailbox: Mailbox, n: int) -> None:
        deadline = time.monotonic() + 15
        while amqp.session.unconfirmed or amqp.session.resend or mailbox.waiting < n:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"not delivered: {amqp.status}"
            amqp.loop.step(0.2)
    return wait


def not_for_amqp(mailboxes: Mailboxes, reason: str) -> None:
    if isinstance(mailboxes, AmqpMailboxes):
        pytest.skip(f"does not apply to AMQP: {reason}")


@pytest.fixture(params=["posix", "memory", "amqp"])
def mailboxes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mailboxes]:
    if request.param == "amqp":
        running: Broker = request.getfixturevalue("broker")
        cfg = _config(tmp_path, f'[amqp]\nurl = "{running.url}"\n')
        assert cfg.amqp.url is not None
        sel = selectors.DefaultSelector()
        amqp = AmqpMailboxes(cfg, cfg.amqp.url, AmqpLoop(sel))
        yield amqp
        amqp.close()
        deadline = time.monotonic() + 10
        while amqp.session.conn is not None and time.monotonic() < deadline:
            amqp.loop.step(0.2)
        for name in (amqp.host_queue, *(amqp.inbox(i) for i in INSTANCES)):
            running.ctl("delete_queue", name)
        sel.close()
        return
    cfg = _config(tmp_path)
    if request.param == "memory":
        memory = MemoryMailboxes(cfg)
        yield memory
        memory.close()
        return
    yield posix.PosixMailboxes(cfg)
    for name in (cfg.host_queue, *(cfg.inbox(i) for i in INSTANCES)):
        posix.unlink_mailbox(name)


def _readable(mailbox: Mailbox) -> bool:
    ready, _, _ = select.select([mailbox.fileno()], [], [], 0)
    return bool(ready)


def test_the_most_urgent_message_comes_first_and_equals_in_the_order_sent(mailboxes: Mailboxes,
                                                                          delivered: Delivered) -> None:
    host = mailboxes.open_host()
    for data, priority in [(b"a", 1), (b"b", 5), (b"c", 1), (b"d", 0), (b"e", 5)]:
        assert host.send(data, priority)
    delivered(host, 5)
    out = []
    while (data := host.receive()) is not None:
        out.append(data)
    assert out == [b"b", b"e", b"a", b"c", b"d"]
    host.close()


def test_a_full_mailbox_refuses_without_blocking(mailboxes: Mailboxes, delivered: Delivered) -> None:
    """AMQP: full means `max_messages` sends awaiting the broker's confirm."""
    inbox = mailboxes.create_inbox("1", 2)
    assert inbox.max_messages == 2
    assert inbox.send(b"1", 0) and inbox.send(b"2", 0)
    assert not inbox.send(b"3", 9)
    delivered(inbox, 2)
    assert inbox.receive() == b"1"
    assert inbox.send(b"3", 0)
    inbox.close()


def test_what_each_side_sends_waits_in_the_other_s_mailbox(mailboxes: Mailboxes, delivered: Delivered) -> None:
    inbox = mailboxes.create_inbox("1", 4)  # the worker's, made first
    host = mailboxes.open_host()
    to_worker, to_host = mailboxes.open_inbox("1"), mailboxes.reach_host()
    assert to_worker.send(b"a job", 1) and to_host.send(b"a result", 0)
    delivered(inbox, 1)
    delivered(host, 1)
    assert (inbox.receive(), host.receive()) == (b"a job", b"a result")
    for mailbox in (inbox, host, to_worker, to_host):
        mailbox.close()


def test_closing_a_handle_leaves_the_mailbox_and_its_messages(mailboxes: Mailboxes) -> None:
    not_for_amqp(mailboxes, "the other side's handle of an AMQP queue only publishes to it (what closing the "
                            "owner's leaves: test_a_reopened_host_mailbox_keeps_what_waits_in_it)")
    inbox = mailboxes.create_inbox("1", 4)
    assert inbox.send(b"for the worker", 1)
    inbox.close()
    again = mailboxes.open_inbox("1")  # as tq-host opens it
    assert again.receive() == b"for the worker"
    again.close()

    host = mailboxes.open_host()
    assert host.send(b"for the host", 0)
    host.close()
    reached = mailboxes.reach_host()  # as a worker opens it
    assert reached.receive() == b"for the host"
    reached.close()


def test_a_reopened_host_mailbox_keeps_what_waits_in_it(mailboxes: Mailboxes, delivered: Delivered) -> None:
    host = mailboxes.open_host()
    assert host.send(b"a result", 0)
    delivered(host, 1)  # AMQP: delivered to this handle, not taken: closing hands it back
    host.close()
    drained: list[bytes] = []
    host = mailboxes.open_host(drained)  # tq-host restarted with the same configuration
    delivered(host, 1)
    assert (drained, host.receive()) == ([], b"a result")
    host.close()


def test_closing_an_older_handle_leaves_a_newer_one_receiving(mailboxes: Mailboxes, delivered: Delivered) -> None:
    older = mailboxes.open_host()
    newer = mailboxes.open_host()  # as tq-host's reload or a worker's reopen may overlap
    older.close()
    assert mailboxes.reach_host().send(b"a result", 0)
    delivered(newer, 1)
    assert newer.receive() == b"a result"
    newer.close()


def test_the_descriptor_polls_readable_while_messages_wait_and_not_when_empty(mailboxes: Mailboxes,
                                                                              delivered: Delivered) -> None:
    inbox = mailboxes.create_inbox("1", 4)
    assert not _readable(inbox)
    assert inbox.send(b"x", 0) and inbox.send(b"y", 0)
    delivered(inbox, 2)
    assert _readable(inbox)
    assert inbox.receive() == b"x"
    assert _readable(inbox)
    assert inbox.receive() == b"y"
    assert not _readable(inbox)
    inbox.close()


def test_an_inbox_of_other_dimensions_is_drained_and_recreated(mailboxes: Mailboxes) -> None:
    not_for_amqp(mailboxes, "an AMQP queue's depth is not one of its dimensions (the bound is the confirm "
                            "window): a reopened inbox keeps its messages")
    old = mailboxes.create_inbox("1", 2)
    assert old.send(b"kept", 3)
    old.close()
    drained: list[bytes] = []
    new = mailboxes.create_inbox("1", 3, drained)
    assert drained == [b"kept"]
    assert new.max_messages == 3 and new.receive() is None
    new.close()


def test_an_unknown_worker_s_inbox_and_a_host_not_started_are_errors(mailboxes: Mailboxes) -> None:
    not_for_amqp(mailboxes, "both sides declare the queues they use, so that messages wait for a worker that is "
                            "away and results for a tq-host that is down")
    with pytest.raises(MailboxError):
        mailboxes.open_inbox("2")
    with pytest.raises(MailboxError):
        mailboxes.reach_host()


def test_a_workers_handle_of_a_host_mailbox_made_anew_is_told_replaced(mailboxes: Mailboxes) -> None:
    not_for_amqp(mailboxes, "a message is published to the queue's name, whichever queue has it now")
    assert isinstance(mailboxes, (posix.PosixMailboxes, MemoryMailboxes))
    first = mailboxes.open_host()
    held = mailboxes.reach_host()
    assert not mailboxes.host_replaced(held)
    mailboxes.depth = 4  # tq-host starts with another mqueue.max_messages: its mailbox is made anew
    second = mailboxes.open_host()
    assert mailboxes.host_replaced(held)
    reached = mailboxes.reach_host()
    assert reached.max_messages == 4 and not mailboxes.host_replaced(reached)
    for mailbox in (first, held, second, reached):
        mailbox.close()


def test_a_posix_mailbox_is_the_owners_alone_whatever_the_umask_and_whoever_made_it_wider() -> None:
    name = f"/tqt-unit-{uuid.uuid4().hex[:8]}"
    old = os.umask(0)
    try:
        q = posix.open_mailbox(name, 10, 1024)
        assert os.fstat(q.fileno()).st_mode & 0o777 == 0o600
        os.fchmod(q.fileno(), 0o666)  # as an older tq (0660) or a careless hand left it
        q.close()
        q = posix.open_mailbox(name, 10, 1024)
        assert os.fstat(q.fileno()).st_mode & 0o777 == 0o600
        q.close()
    finally:
        os.umask(old)
        posix.unlink_mailbox(name)


def test_a_posix_mailbox_of_another_message_size_is_drained_and_recreated() -> None:
    name = f"/tqt-unit-{uuid.uuid4().hex[:8]}"
    try:
        old = posix.open_mailbox(name, 5, 1024)
        assert old.send(b"kept", 3)
        old.close()
        drained: list[bytes] = []
        new = posix.open_mailbox(name, 5, 2048, drained=drained)
        assert drained == [b"kept"]
        assert (new.mq.max_messages, new.mq.max_message_size) == (5, 2048)
        new.close()
    finally:
        posix.unlink_mailbox(name)
