"""AmqpLoop, pika's I/O loop over the daemon's selector: timers answered through deadline() and run_due(now),
descriptors registered with the daemons' convention (a key's data is a callback taking the mask), and a
connection attempt that starts no thread (pika 1.2 resolves on a thread of its own unless told otherwise)."""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Iterator

import pika
import pytest

from tq.transport.amqploop import AmqpLoop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sel() -> Iterator[selectors.BaseSelector]:
    s = selectors.DefaultSelector()
    yield s
    s.close()


def test_timers_run_when_due_in_order_and_a_removed_one_never(sel: selectors.BaseSelector) -> None:
    clock = Clock()
    loop = AmqpLoop(sel, clock)
    ran: list[str] = []
    assert loop.deadline() is None and loop.timeout(clock.now, 5.0) == 5.0
    loop.call_later(2.0, lambda: ran.append("b"))
    loop.call_later(1.0, lambda: ran.append("a"))
    removed = loop.call_later(0.5, lambda: ran.append("removed"))
    loop.remove_timeout(removed)
    assert loop.deadline() == 101.0 and loop.timeout(clock.now) == 1.0
    assert loop.run_due(100.9) == 0 and ran == []
    assert loop.run_due(101.0) == 1 and ran == ["a"]
    assert loop.run_due(105.0) == 1 and ran == ["a", "b"]
    assert loop.deadline() is None


def test_a_deferred_callback_makes_the_next_select_return_at_once_and_runs_at_the_next_step(
        sel: selectors.BaseSelector) -> None:
    clock = Clock()
    loop = AmqpLoop(sel, clock)
    ran: list[int] = []

    def first() -> None:
        ran.append(1)
        loop.add_callback(lambda: ran.append(2))  # added while running: waits for the next step
    loop.add_callback(first)
    assert loop.timeout(clock.now, 30.0) == 0.0
    assert loop.run_due(clock.now) == 1 and ran == [1]
    assert loop.run_due(clock.now) == 1 and ran == [1, 2]
    assert loop.timeout(clock.now, 30.0) == 30.0


def test_descriptors_follow_the_daemons_convention(sel: selectors.BaseSelector) -> None:
    loop = AmqpLoop(sel)
    r, w = os.pipe()
    try:
        seen: list[tuple[int, int]] = []
        loop.add_handler(r, lambda fd, events: seen.append((fd, events)), loop.READ)
        os.write(w, b"x")
        for key, mask in sel.select(0):
            key.data(mask)  # what Daemon.select does
        assert seen == [(r, loop.READ)]
        loop.update_handler(r, loop.READ | loop.WRITE)
        assert sel.get_key(r).events == selectors.EVENT_READ | selectors.EVENT_WRITE
        loop.remove_handler(r)
        loop.remove_handler(r)  # twice is harmless
        assert r not in sel.get_map()
    finally:
        os.close(r)
        os.close(w)


def test_connecting_starts_no_thread(sel: selectors.BaseSelector, monkeypatch: pytest.MonkeyPatch) -> None:
    """pika 1.2's own adapter resolves the host on a threading.Timer, even an address literal."""
    started: list[threading.Thread] = []
    original = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self) or original(self))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it
    loop = AmqpLoop(sel)
    failed: list[BaseException] = []
    pika.SelectConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1),
                          on_open_error_callback=lambda _c, e: failed.append(e), custom_ioloop=loop.services())
    for _ in range(100):
        if failed:
            break
        loop.step(0.1)
    assert failed and started == []
