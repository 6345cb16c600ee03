"""The per-queue counts of open jobs (tq.host.opencounts): an operator's request counts afresh; a periodic reader
reuses a costly count for cost / SHARE seconds and a cheap one never. Clocks are given, so no test waits."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from parts import Parts, make_parts
from tq.host.opencounts import FLOOR, SHARE, OpenCounts
from tq.host.server import Conn


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n')
    yield p
    p.close()


def submit(parts: Parts, n: int, queue: str = "default") -> None:
    a, b = socket.socketpair()
    jobs = [{"task": "t", "queue": queue}] * n
    parts.requests.handle(Conn(a, uid=0), json.dumps({"op": "submit", "rid": 1, "jobs": jobs}).encode())
    assert all(reply["ok"] for _, reply in parts.ledger.take())
    a.close()
    b.close()


class Clocks:
    """A monotonic clock moved by hand, and a CPU clock that says each count cost `cost` seconds."""

    def __init__(self, cost: float) -> None:
        self.now, self.cost, self._cpu = 100.0, cost, 0.0

    def cpu(self) -> float:
        self._cpu += self.cost  # a count reads it before and after: each count costs `cost`
        return self._cpu

    def clock(self) -> float:
        return self.now


def queued(counts: OpenCounts, periodic: bool) -> int:
    states, _oldest = (counts.recent() if periodic else counts.now())["default"]
    return states["queued"]


def test_a_costly_count_is_reused_by_periodic_readers_for_its_cost_over_the_share(parts: Parts) -> None:
    clocks = Clocks(cost=FLOOR * 2)
    counts = OpenCounts(parts.jobs, clocks.cpu, clocks.clock)
    submit(parts, 3)
    assert queued(counts, periodic=True) == 3
    submit(parts, 2)
    assert queued(counts, periodic=True) == 3  # reused
    clocks.now += FLOOR * 2 / SHARE * 0.99
    assert queued(counts, periodic=True) == 3
    clocks.now += FLOOR * 2 / SHARE * 0.02
    assert queued(counts, periodic=True) == 5  # counted again
    submit(parts, 1)
    assert queued(counts, periodic=False) == 6  # an operator's request: always now


def test_a_cheap_count_is_never_reused(parts: Parts) -> None:
    clocks = Clocks(cost=FLOOR * 0.9)
    counts = OpenCounts(parts.jobs, clocks.cpu, clocks.clock)
    submit(parts, 3)
    assert queued(counts, periodic=True) == 3
    submit(parts, 2)
    assert queued(counts, periodic=True) == 5


def test_the_host_s_metrics_and_queues_listing_agree_on_a_small_queue_at_once(parts: Parts) -> None:
    submit(parts, 2, queue="q1")
    assert [q["states"] for q in parts.queues.listing(periodic=True) if q["queue"] == "q1"] == [{"queued": 2}]
    submit(parts, 1, queue="q1")
    assert [q["states"] for q in parts.queues.listing(periodic=True) if q["queue"] == "q1"] == [{"queued": 3}]
    assert [q["states"] for q in parts.queues.listing() if q["queue"] == "q1"] == [{"queued": 3}]
