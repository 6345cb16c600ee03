"""tq-gateway's parts alone: the fan-out of the event stream (a follower behind is told what it missed, and never
makes the gateway keep more than its queue), the count of refused tokens, and what XML-RPC can carry."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from tq.control import RequestError
from tq.events import Selection
from tq.gateway.api import Api
from tq.gateway.app import Parts
from tq.gateway.auth import BLOCK, FAILURES, NOT_VALID, REMEMBER, WINDOW, Failures
from tq.gateway.hostlink import HostLink
from tq.gateway.live import QUEUE_SIZE, Follower, Hub, Live
from tq.gateway.xmlrpc import _plain
from tq.routes import API, ROUTES


def test_a_follower_behind_is_told_what_it_missed_and_its_queue_stays_bounded() -> None:
    async def scenario() -> list[dict[str, object]]:
        f = Follower(Selection())
        for i in range(QUEUE_SIZE + 500):
            f.offer({"event": "done", "job": i + 1, "ts": float(i)}, b"")
        assert f.queue.qsize() == QUEUE_SIZE and f.missed == 500
        got = [f.queue.get_nowait() for _ in range(10)]
        f.offer({"event": "done", "job": 0, "ts": 1e9}, b"")
        rest = [f.queue.get_nowait() for _ in range(f.queue.qsize())]
        return [event for event, _ in got + rest]

    seen = asyncio.run(scenario())
    assert seen[-2:] == [{"missed": 500}, {"event": "done", "job": 0, "ts": 1e9}]
    assert len(seen) == QUEUE_SIZE + 2


def test_an_address_is_refused_after_failures_within_the_window_and_again_after_the_block() -> None:
    f = Failures()
    for i in range(FAILURES - 1):
        f.note("10.0.0.1", f"key{i}", 100.0 + i)
    assert f.blocked_for("10.0.0.1", 120.0) == 0
    f.note("10.0.0.1", "last", 120.0)
    assert f.blocked_for("10.0.0.1", 120.0) == BLOCK and f.blocked_for("10.0.0.2", 120.0) == 0
    assert f.blocked_for("10.0.0.1", 120.0 + BLOCK) == 0  # the block is over ...
    f.note("10.0.0.1", "again", 121.0 + BLOCK + WINDOW)  # ... and failures out of the window no longer count
    assert f.blocked_for("10.0.0.1", 121.0 + BLOCK + WINDOW) == 0
    assert f.refusal("again", 122.0 + BLOCK + WINDOW) == NOT_VALID and f.refusal("never", 0.0) is None


def test_a_refused_token_is_remembered_with_its_reason_for_a_while() -> None:
    f = Failures()
    f.note("10.0.0.1", "key", 100.0, "token t: no user 'bob' on this system now")
    assert f.refusal("key", 100.0 + REMEMBER - 1) == "token t: no user 'bob' on this system now"
    assert f.refusal("key", 100.0 + REMEMBER) is None


def test_failures_spread_over_more_than_the_window_never_block() -> None:
    f = Failures()
    for i in range(FAILURES * 3):
        f.note("10.0.0.1", str(i), i * (WINDOW / (FAILURES - 2)))
        assert f.blocked_for("10.0.0.1", i * (WINDOW / (FAILURES - 2))) == 0


def test_xmlrpc_values_leave_out_none_and_carry_large_integers_as_text() -> None:
    assert _plain({"a": None, "b": [None, 1], "c": 2**40, "d": {"e": -(2**31)}}) == {
        "b": ["", 1], "c": str(2**40), "d": {"e": -(2**31)}}


def test_the_gateway_serves_every_route_the_remote_client_asks_for() -> None:
    parts = cast(Parts, None)  # (routes are listed without any part: a handler asks for them when called)
    served = {(r.method, r.path) for table in (Api(parts), Live(parts, Hub(parts))) for r in table.routes()}
    asked = {(route.method, API + route.path) for op in ROUTES.values() for route in op}
    assert asked <= served
    assert served - asked == {("GET", "/metrics")}  # the Prometheus text, at the path Prometheus expects


def test_a_tokens_checks_share_one_ping_sent_after_what_each_asks() -> None:
    """HostLink.check: followers of one token checking at once share a ping; one asking about a later moment
    than the last ping was sent gets a ping of its own; a refusal reaches each of them."""
    async def scenario() -> tuple[int, int, int]:
        link = HostLink("/nonexistent", "tq_x", logging.getLogger("test"))
        pings: list[asyncio.Future[dict[str, object]]] = []

        async def call(op: str, wait: float = 0.0, **fields: object) -> dict[str, object]:
            pings.append(asyncio.get_running_loop().create_future())
            return await pings[-1]

        async def settle() -> None:  # (each check's task, and the ping's, runs)
            for _ in range(5):
                await asyncio.sleep(0)

        link.call = call  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        since = loop.time()
        checks = [asyncio.ensure_future(link.check(since)) for _ in range(5)]
        await settle()
        shared = len(pings)
        pings[-1].set_result({})
        await asyncio.gather(*checks)
        await link.check(since)  # answered already after `since`: no new ping
        answered = len(pings)
        later = asyncio.ensure_future(link.check(loop.time() + 1))
        await settle()
        pings[-1].set_exception(RequestError("unauthorized", "token x was revoked"))
        with pytest.raises(RequestError):
            await later
        return shared, answered, len(pings)

    assert asyncio.run(scenario()) == (1, 1, 2)
