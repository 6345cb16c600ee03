"""The AMQP transport against a real RabbitMQ (tests/broker.py: consumer_timeout 60 s, loopback, a free port),
driven by a selector loop as tq-host's and tq-worker's are: heartbeats kept while the loop waits on another
descriptor (and lost when the loop does not service the adapter), a queue deleted under its consumer noticed at
once and consumed again, waiting messages in priority order (Cancel, jobs, the Sync fence), connections
closed by the broker noticed at once, a broker stopped (stop_app) or killed (kill -9) under a stream of
confirmed sends with nothing lost, and a bad password or an unreachable broker said in one line without the password.

Only one broker runs at a time on this machine: one per module, stopped at its end."""

from __future__ import annotations

import contextlib
import selectors
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import PASSWORD, Broker, broker, free_ports  # noqa: F401  (the fixture)
from etchosts import hosts_name
from tq import configload
from tq.transport.amqp import AmqpMailbox, AmqpMailboxes
from tq.transport.amqploop import AmqpLoop


class Ends:
    """Connections to the broker on one selector loop, as a daemon has them; stopped at the test's end."""

    def __init__(self, tmp_path: Path, url: str, heartbeat: str = "10s") -> None:
        path = tmp_path / "tq.toml"
        path.write_text(f'[mqueue]\nprefix = "/tqt-amqp-{uuid.uuid4().hex[:8]}"\n'
                        f'[amqp]\nurl = "{url}"\nheartbeat = "{heartbeat}"\n')
        self.cfg = configload.load(str(path))
        self.sel = selectors.DefaultSelector()
        self.loop = AmqpLoop(self.sel)
        self.made: list[AmqpMailboxes] = []

    def connect(self, name: str = "tq") -> AmqpMailboxes:
        assert self.cfg.amqp.url is not None
        mailboxes = AmqpMailboxes(self.cfg, self.cfg.amqp.url, self.loop, connection_name=name)
        self.made.append(mailboxes)
        return mailboxes

    def until(self, done: Callable[[], bool], within: float, what: str,
              step: Callable[[], None] | None = None) -> float:
        """Drive the loop until `done()`; the seconds it took."""
        start = time.monotonic()
        while not done():
            assert time.monotonic() - start < within, f"not {what} within {within:g}s: " + \
                "; ".join(m.status for m in self.made)
            if step is not None:
                step()
            self.loop.step(0.1)
        return time.monotonic() - start

    def close(self) -> None:
        for mailboxes in self.made:
            mailboxes.close()
        deadline = time.monotonic() + 10
        while any(m.session.conn is not None for m in self.made) and time.monotonic() < deadline:
            self.loop.step(0.1)
        self.sel.close()


@pytest.fixture
def ends(tmp_path: Path, broker: Broker) -> Iterator[Ends]:  # noqa: F811
    made = Ends(tmp_path, broker.url)
    yield made
    made.close()


def hb_ends(tmp_path: Path, broker: Broker) -> Ends:  # noqa: F811
    return Ends(tmp_path, broker.url, heartbeat="5s")


def connection_timeouts(broker: Broker) -> list[str]:  # noqa: F811
    return broker.ctl("list_connections", "timeout", "--silent").stdout.split()


def run_job(loop: AmqpLoop, sel: selectors.BaseSelector, seconds: int, service: bool) -> int:
    """A 25 s job's process, its stdout watched in the loop's selector, as tq-worker watches a job; `service`:
    whether the step runs pika's timers as a daemon's must. Returns the loop's wake-ups."""
    proc = subprocess.Popen(["sh", "-c", f"sleep {seconds}; echo finished"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    done: list[bytes] = []
    sel.register(proc.stdout, selectors.EVENT_READ, lambda _mask: done.append(proc.stdout.read()))  # type: ignore
    wakeups = 0
    try:
        while not done:
            now = time.monotonic()
            timeout = loop.timeout(now, 60.0) if service else 60.0
            for key, mask in sel.select(timeout):
                key.data(mask)
            if service:
                loop.run_due(time.monotonic())
            wakeups += 1
    finally:
        sel.unregister(proc.stdout)
        proc.wait()
        proc.stdout.close()
    return wakeups


def test_heartbeats_survive_a_25s_job_while_the_loop_services_the_adapter(tmp_path: Path,
                                                                          broker: Broker) -> None:  # noqa: F811
    ends = hb_ends(tmp_path, broker)
    try:
        mailboxes = ends.connect("heartbeat")
        host = mailboxes.open_host()
        ends.until(lambda: mailboxes.ready, 15, "connected")
        assert connection_timeouts(broker) == ["5"]  # the broker holds us to 5 s
        wakeups = run_job(ends.loop, ends.sel, 25, service=True)
        assert wakeups < 200  # woken by pika's timers, not spinning
        assert mailboxes.ready and mailboxes.error == "" and mailboxes.session.counts["connects"] == 1
        assert host.send(b"after the job", 1)
        ends.until(lambda: host.waiting == 1, 5, "delivered after the job")
    finally:
        ends.close()


def test_without_servicing_the_adapter_the_broker_drops_the_connection(tmp_path: Path,
                                                                       broker: Broker) -> None:  # noqa: F811
    """The negative control of the test above: the same wait without run_due sends no heartbeat."""
    ends = hb_ends(tmp_path, broker)
    try:
        mailboxes = ends.connect("no-heartbeat")
        mailboxes.open_host()
        ends.until(lambda: mailboxes.ready, 15, "connected")
        run_job(ends.loop, ends.sel, 25, service=False)
        ends.until(lambda: mailboxes.error != "", 5, "the lost connection noticed")
        assert "closed by the broker" in mailboxes.error or "lost" in mailboxes.error, mailboxes.error
        ends.until(lambda: mailboxes.ready, 15, "reconnected")
        assert mailboxes.session.counts["connects"] == 2
    finally:
        ends.close()


def test_a_queue_deleted_under_its_consumer_is_noticed_at_once_and_consumed_again(ends: Ends,
                                                                                  broker: Broker) -> None:  # noqa: F811
    mailboxes = ends.connect("worker")
    inbox = mailboxes.create_inbox("1", 4)
    ends.until(lambda: mailboxes.ready, 15, "connected")
    broker.delete_queue(mailboxes.inbox("1"))
    noticed = ends.until(lambda: mailboxes.session.counts["cancelled"] == 1, 2, "the cancel seen")
    assert noticed < 1.0
    ends.until(lambda: mailboxes.ready, 5, "consuming again")
    assert inbox.send(b"to the new queue", 1)
    ends.until(lambda: inbox.waiting == 1, 5, "delivered to the new queue")
    assert inbox.receive() == b"to the new queue"


def test_a_message_sent_to_a_deleted_queue_comes_back_and_is_sent_again(ends: Ends,
                                                                        broker: Broker) -> None:  # noqa: F811
    """The host's handle of an inbox whose queue is deleted: the broker returns the message; the queue is
    declared again and the message waits there for the worker."""
    host_side = ends.connect("host")
    to_worker = host_side.open_inbox("9")
    ends.until(lambda: host_side.ready, 15, "connected")
    broker.delete_queue(host_side.inbox("9"))
    assert to_worker.send(b"a job", 1)
    ends.until(lambda: host_side.session.counts["returned"] == 1 and not host_side.session.unconfirmed
               and not host_side.session.resend, 10, "returned and sent again")
    worker = ends.connect("worker")
    inbox = worker.create_inbox("9", 4)
    ends.until(lambda: inbox.waiting == 1, 10, "delivered")
    assert inbox.receive() == b"a job"


def test_messages_waiting_before_the_consumer_starts_are_all_taken_and_acknowledged(
        ends: Ends, broker: Broker) -> None:  # noqa: F811
    """Deliveries start before the consume channel's last method is answered: those taken at once must be
    acknowledged too (else the broker stops at the prefetch and, a minute later, closes the channel)."""
    host_side = ends.connect("host")
    to_worker = host_side.open_inbox("w")
    sent = 0

    def send() -> None:
        nonlocal sent
        while sent < 3000 and to_worker.send(b"j" * 200, 1):
            sent += 1
    ends.until(lambda: sent == 3000 and not host_side.session.unconfirmed and not host_side.session.resend, 30,
               "3000 sent", send)
    worker = ends.connect("worker")
    inbox = worker.create_inbox("w", 256)
    taken = 0

    def take() -> None:
        nonlocal taken
        while inbox.receive() is not None:
            taken += 1
    ends.until(lambda: taken == 3000, 20, "3000 taken", take)
    ends.until(lambda: unacknowledged(broker, worker.inbox("w")) == 0, 10, "all acknowledged")


def unacknowledged(broker: Broker, queue: str) -> int:  # noqa: F811
    listed = broker.ctl("list_queues", "name", "messages_unacknowledged", "--silent").stdout.splitlines()
    counts = dict(line.split("\t") for line in listed if "\t" in line)
    return int(counts[queue])


def test_the_broker_orders_waiting_messages_cancel_then_jobs_then_the_fence(ends: Ends) -> None:
    """What waits in the broker (the worker away, or its prefetch full) comes out by the queue's priority."""
    host_side = ends.connect("host")
    to_worker = host_side.open_inbox("p")
    for data, priority in [(b"sync", 0), (b"job", 1001), (b"cancel", 3000), (b"job 2", 1001)]:
        assert to_worker.send(data, priority)
    ends.until(lambda: not host_side.session.unconfirmed and not host_side.session.resend, 10, "confirmed")
    worker = ends.connect("worker")
    inbox = worker.create_inbox("p", 1)  # prefetch 1: one delivery at a time, the broker's pick
    taken: list[bytes] = []

    def take() -> None:
        if (data := inbox.receive()) is not None:
            taken.append(data)
    ends.until(lambda: len(taken) == 4, 10, "all taken", take)
    assert taken == [b"cancel", b"job", b"job 2", b"sync"]


def test_connections_closed_by_the_broker_are_noticed_at_once_and_consuming_resumes(
        ends: Ends, broker: Broker) -> None:  # noqa: F811
    worker = ends.connect("worker")
    inbox = worker.create_inbox("c", 4)
    host_side = ends.connect("host")
    to_worker = host_side.open_inbox("c")
    ends.until(lambda: worker.ready and host_side.ready, 15, "connected")
    assert broker.ctl("close_all_connections", "maintenance").returncode == 0
    noticed = ends.until(lambda: worker.error != "" and host_side.error != "", 2, "the closes seen")
    assert noticed < 1.0 and "320 CONNECTION_FORCED" in worker.error, worker.error
    ends.until(lambda: worker.ready and host_side.ready, 10, "reconnected")
    assert to_worker.send(b"after the close", 1)
    ends.until(lambda: inbox.waiting == 1, 5, "consumed after the reconnect")


def test_a_mailbox_opened_while_the_channels_open_is_consumed_too(ends: Ends) -> None:
    mailboxes = ends.connect("worker")
    first = mailboxes.create_inbox("1", 4)
    consuming = mailboxes.session.consuming
    ends.until(lambda: consuming.sub_open is not None and consuming.sub is None, 10, "the consume channel opening")
    second = mailboxes.create_inbox("2", 4)  # between the channel's open and its consumers' answers
    ends.until(lambda: mailboxes.ready, 10, "connected")
    assert first.send(b"one", 1) and second.send(b"two", 1)
    ends.until(lambda: first.waiting == 1 and second.waiting == 1, 10, "both consumed")


class Stream:
    """Numbered messages from a worker's connection to tq-host's mailbox on another, as fast as the window lets."""

    def __init__(self, ends: Ends, total: int) -> None:
        self.total, self.sent = total, 0
        self.sender, self.receiver = ends.connect("sender"), ends.connect("receiver")
        self.out: AmqpMailbox = self.sender.reach_host()
        self.into: AmqpMailbox = self.receiver.open_host()
        self.got: list[int] = []

    def send(self, most: int) -> None:
        while self.sent < min(self.total, most) and self.out.send(b"%d" % self.sent, 1):
            self.sent += 1

    def take(self) -> None:
        while (data := self.into.receive()) is not None:
            self.got.append(int(data))

    def step(self) -> None:
        self.send(self.total)
        self.take()

    def complete(self) -> bool:
        return len(set(self.got)) == self.total


def test_stop_app_and_start_app_under_a_stream_lose_nothing(ends: Ends, broker: Broker) -> None:  # noqa: F811
    stream = Stream(ends, 3000)
    ends.until(lambda: stream.sender.ready and stream.receiver.ready, 15, "connected")
    ends.until(lambda: stream.sent >= 1000, 30, "1000 sent", lambda: stream.send(1000) or stream.take())
    stream.send(1300)  # taken, not yet written: unconfirmed when the broker stops
    assert stream.sender.session.unconfirmed or stream.sender.session.resend
    broker.stop_app()
    ends.until(lambda: stream.sender.error != "" and stream.receiver.error != "", 10, "the stop noticed")
    assert not stream.sender.ready
    broker.start_app()
    ends.until(stream.complete, 60, "every message received", stream.step)
    assert stream.sender.session.counts["resent"] > 0
    assert stream.sender.session.counts["connects"] >= 2 and stream.receiver.session.counts["connects"] >= 2
    assert sorted(set(stream.got)) == list(range(3000))


def test_the_connection_closed_in_the_middle_of_publishing_loses_nothing(
        ends: Ends, broker: Broker) -> None:  # noqa: F811
    stream = Stream(ends, 3000)
    ends.until(lambda: stream.sender.ready and stream.receiver.ready, 15, "connected")
    ends.until(lambda: stream.sent >= 1000, 30, "1000 sent", lambda: stream.send(1000) or stream.take())
    stream.send(1300)  # published or about to be, not confirmed: the connection goes under them
    assert stream.sender.session.unconfirmed or stream.sender.session.resend
    assert broker.ctl("close_all_connections", "mid-publish").returncode == 0
    ends.until(stream.complete, 60, "every message received", stream.step)
    assert stream.sender.session.counts["connects"] >= 2 and stream.sender.session.counts["resent"] > 0
    assert sorted(set(stream.got)) == list(range(3000))


def test_kill_9_of_the_broker_under_a_stream_loses_nothing(ends: Ends, broker: Broker) -> None:  # noqa: F811
    stream = Stream(ends, 3000)
    ends.until(lambda: stream.sender.ready and stream.receiver.ready, 15, "connected")
    ends.until(lambda: stream.sent >= 1000, 30, "1000 sent", lambda: stream.send(1000) or stream.take())
    stream.send(1300)
    broker.kill9()
    ends.until(lambda: stream.sender.error != "" and stream.receiver.error != "", 10, "the kill noticed")
    assert "cannot reach" in stream.sender.error or "lost" in stream.sender.error, stream.sender.error
    broker.start()
    ends.until(stream.complete, 90, "every message received", stream.step)
    assert stream.sender.session.counts["resent"] > 0
    assert sorted(set(stream.got)) == list(range(3000))


def test_a_bad_password_is_one_clear_line_without_the_password(tmp_path: Path, broker: Broker) -> None:  # noqa: F811
    wrong = "not-" + PASSWORD
    ends = Ends(tmp_path, broker.url.replace(f":{PASSWORD}@", f":{wrong}@"))
    try:
        mailboxes = ends.connect()
        mailboxes.open_host()
        ends.until(lambda: mailboxes.error != "", 10, "refused")
        assert mailboxes.error == f"the broker at amqp://tq:***@127.0.0.1:{broker.port}/ refused the login " \
                                  "(wrong user or password?)"
        assert wrong not in mailboxes.status and "retrying in 1s" in mailboxes.status
        assert not mailboxes.ready
    finally:
        ends.close()


def test_an_unreachable_broker_is_one_clear_line_and_retried_with_backoff(tmp_path: Path) -> None:
    port = free_ports()
    ends = Ends(tmp_path, f"amqp://tq:{PASSWORD}@127.0.0.1:{port}/")
    try:
        mailboxes = ends.connect()
        mailboxes.open_host()
        ends.until(lambda: mailboxes.error != "", 10, "refused")
        assert mailboxes.error == f"cannot reach the broker at amqp://tq:***@127.0.0.1:{port}/: Connection refused"
        assert mailboxes.status.endswith("retrying in 1s")
        ends.until(lambda: mailboxes.status.endswith("retrying in 2s"), 5, "retried after 1 s")
        assert PASSWORD not in mailboxes.status
        connects = mailboxes.session.counts["connects"]
        mailboxes.close()  # while a retry waits: it must not connect again
        ends.until(lambda: ends.loop.deadline() is None, 5, "the retry's time passed")
        assert mailboxes.session.counts["connects"] == connects and mailboxes.session.conn is None
    finally:
        ends.close()


def test_a_broker_name_that_does_not_resolve_is_waited_for_and_looked_up_again_at_each_attempt(
        tmp_path: Path, broker: Broker) -> None:  # noqa: F811
    with hosts_name() as (name, resolve_to):
        ends = Ends(tmp_path, f"amqp://tq:{PASSWORD}@{name}:{broker.port}/")
        try:
            mailboxes = ends.connect()
            mailboxes.open_host()
            ends.until(lambda: mailboxes.error != "", 15, "the lookup failed")
            assert mailboxes.error.startswith(f"cannot resolve the broker's host in amqp://tq:***@{name}:"), \
                mailboxes.error
            assert mailboxes.status.endswith("retrying in 1s") and not mailboxes.ready
            resolve_to("127.0.0.1")  # (the broker came up under its name, or moved: the next attempt follows)
            ends.until(lambda: mailboxes.ready, 30, "connected once the name resolves")
            assert mailboxes.waiting_for == ""
        finally:
            ends.close()


def test_a_port_that_does_not_speak_amqp_is_one_clear_line(tmp_path: Path) -> None:
    import socket
    with socket.create_server(("127.0.0.1", 0)) as server:  # takes the connection, answers nothing, closes
        port = server.getsockname()[1]
        ends = Ends(tmp_path, f"amqp://tq:{PASSWORD}@127.0.0.1:{port}/")
        try:
            server.setblocking(False)
            mailboxes = ends.connect()
            mailboxes.open_host()

            def hung_up() -> bool:
                with contextlib.suppress(BlockingIOError):
                    server.accept()[0].close()
                return mailboxes.error != ""
            ends.until(hung_up, 15, "the attempt failed")
            assert mailboxes.error == f"the server at amqp://tq:***@127.0.0.1:{port}/ does not speak AMQP 0-9-1: " \
                                      "is that the broker's port (5672; amqps 5671)?", mailboxes.error
        finally:
            ends.close()
