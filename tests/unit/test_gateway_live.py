"""The gateway's fan-out of the event stream: a follower that falls behind is told how many it missed, and
never makes the gateway keep more than its queue."""

from __future__ import annotations

import asyncio

from tq.gateway.live import QUEUE_SIZE, Filter, Follower


def test_a_follower_behind_is_told_what_it_missed_and_its_queue_stays_bounded() -> None:
    async def scenario() -> list[dict[str, object]]:
        f = Follower(Filter())
        for i in range(QUEUE_SIZE + 500):
            f.offer({"event": "done", "job": i + 1, "ts": float(i)})
        assert f.queue.qsize() == QUEUE_SIZE and f.missed == 500
        got = [f.queue.get_nowait() for _ in range(10)]
        f.offer({"event": "done", "job": 0, "ts": 1e9})
        rest = [f.queue.get_nowait() for _ in range(f.queue.qsize())]
        return got + rest

    seen = asyncio.run(scenario())
    assert seen[-2:] == [{"missed": 500}, {"event": "done", "job": 0, "ts": 1e9}]
    assert len(seen) == QUEUE_SIZE + 2


def test_filters_match_as_tq_hosts_do() -> None:
    job = {"event": "done", "job": 3, "task": "a.b", "queue": "q1"}
    worker = {"event": "up", "queues": ["q1", "q2"], "worker": "1"}
    assert Filter(job=3).matches(job) and not Filter(job=4).matches(job)
    assert Filter(task="a.b").matches(job) and not Filter(task="a.b").matches(worker)
    assert Filter(queue="q1").matches(job) and Filter(queue="q2").matches(worker)
    assert not Filter(queue="q2").matches(job)
