"""tq-gateway under abuse, on real processes: slow clients (slowloris), a flood of connections, bodies too large,
and fuzzed requests (random methods, paths, headers and bodies, as test_fuzz.py fuzzes the control socket).
Each is answered with a clear 4xx or a documented 503, and the gateway and tq-host stay up."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Gateway, Suite, request, temporary_suite, wait_until

LIMITS = '[gateway]\nrequest_timeout = "1s"\nmax_connections = 20\nmax_body = "64K"\nmax_wait = "1s"\n'
SCALE = int(os.environ.get("TQ_FUZZ_SCALE", "1"))


@pytest.fixture(scope="module")
def gw() -> Iterator[tuple[Suite, Gateway]]:
    with temporary_suite() as suite:
        suite.write_config(LIMITS)
        suite.start(workers=1)
        yield suite, suite.gateway()


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long the gateway took to close `sock` (AssertionError past `seconds`)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        raise AssertionError(f"the gateway kept a slow connection past {seconds}s") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def connect(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=5)


def test_half_a_header_is_dropped_within_the_limit_while_others_are_served(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    slow = connect(g)
    slow.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert request(g, "GET", "/api/v1/ping").status == 200  # others are answered meanwhile
    assert closed_within(slow, 5) < 3
    slow.close()


def test_half_a_second_request_on_a_kept_alive_connection_is_dropped(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    s = connect(g)
    s.sendall(f"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.token}\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /api/v1/ping HTTP/1.1\r\nHo")
    assert closed_within(s, 6) < 4
    s.close()


def test_a_body_that_does_not_arrive_is_408_and_closed(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    s = connect(g)
    s.sendall(f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.token}\r\n".encode()
              + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"task": ')
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 408")
    assert closed_within(s, 5) < 0.5  # (with it, not request_timeout later: trial C #5)
    assert "Traceback" not in g.daemon.text()
    s.close()


def test_a_flood_of_connections_is_answered_503_and_passes(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    flood = [connect(g) for _ in range(25)]
    try:
        a = request(g, "GET", "/api/v1/ping")
        assert (a.status, a.code) == (503, "unavailable"), a.raw
        assert "too many connections" in a.json["error"]["message"]
    finally:
        for s in flood:
            s.close()
    wait_until(lambda: request(g, "GET", "/api/v1/ping").status == 200, what="the flood gone")


def test_a_body_over_max_body_is_413_json(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    a = request(g, "POST", "/api/v1/jobs", {"task": "x", "args": ["y" * 100_000]})
    assert (a.status, a.code) == (413, "too_large"), a.raw
    a = request(g, "POST", "/RPC2", b"<methodCall>" + b" " * 100_000, headers={"Content-Type": "text/xml"})
    assert (a.status, a.code) == (413, "too_large"), a.raw


# ---- fuzz: random requests, each answered below 500 (or a documented 503) ---------------------------------

ROUTES = ["/api/v1/jobs", "/api/v1/jobs/1", "/api/v1/jobs/1/cancel", "/api/v1/jobs/1/retry", "/api/v1/wait",
          "/api/v1/jobs/cancel", "/api/v1/jobs/retry", "/api/v1/queues", "/api/v1/queues/default/pause",
          "/api/v1/queues/default/resume", "/api/v1/workers", "/api/v1/workers/9", "/api/v1/schedules",
          "/api/v1/status", "/api/v1/metrics", "/api/v1/events", "/api/v1/tokens", "/api/v1/tokens/x",
          "/api/v1/whoami", "/api/v1/ping", "/metrics", "/RPC2", "/", "/login", "/logout", "/static/app.js"]
queries = st.lists(st.tuples(st.sampled_from(["wait", "state", "limit", "after", "job", "task", "queue", "recent",
                                              "x"]), st.text("0123456789smhabc-._%", max_size=6)), max_size=3)
paths = st.builds(lambda p, q: p + ("?" + "&".join(f"{k}={v}" for k, v in q) if q else ""),
                  st.sampled_from(ROUTES) | st.text("/abcdefv0123456789%._-", min_size=1, max_size=30).map(
                      lambda t: "/" + t), queries)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]) | st.from_regex(
    r"[A-Z]{1,8}", fullmatch=True)
json_bodies = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["task", "args", "jobs", "id", "ids", "timeout", "chain", "state",
                                                "exchange", "delay", "name", "user"]) | st.text(max_size=5),
                               inner, max_size=4), max_leaves=6)
bodies = st.binary(max_size=300) | json_bodies.map(lambda v: __import__("json").dumps(v).encode()) | st.sampled_from(
    [b"<?xml version='1.0'?><methodCall><methodName>get</methodName><params><param><value><int>1</int></value>"
     b"</param></params></methodCall>", b"<methodCall><methodName>call</methodName></methodCall>"])
headers = st.dictionaries(st.sampled_from(["Accept", "Cookie", "Content-Type", "Last-Event-ID",
                                           "X-Other", "Transfer-Encoding", "Expect"]),
                          st.text("abcdefghijklmnopqrstuvwxyz0123456789 =/;:-", max_size=30), max_size=4)


def raw_request(g: Gateway, method: str, path: str, head: dict[str, str], body: bytes) -> int:
    """The status of one request sent byte by byte as given, with the suite's token (0: the gateway closed
    without an answer). (No random tokens: 20 refused from this address would make every answer 429.)"""
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(body)}",
             f"Authorization: Bearer {g.token}",
             *(f"{k}: {v}" for k, v in head.items() if k != "Accept" or "event-stream" not in v)]
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(m.group(1)) if m else 0


@settings(max_examples=300 * SCALE, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(methods, paths, headers, bodies)
def test_fuzz_http_answers_below_500_and_the_gateway_stays_up(gw: tuple[Suite, Gateway], method: str, path: str,
                                                              head: dict[str, str], body: bytes) -> None:
    _, g = gw
    status = raw_request(g, method, path, head, body)
    assert 0 < status < 500 or status == 503, (method, path, head, body[:100], status)


def test_after_the_fuzz_both_daemons_are_up(gw: tuple[Suite, Gateway]) -> None:
    suite, g = gw
    assert request(g, "GET", "/api/v1/status").status == 200
    assert all(d.proc.poll() is None for d in suite.daemons)
    assert "Traceback" not in next(d for d in suite.daemons if d.name.startswith("gateway")).text()


def test_a_follower_that_does_not_read_is_told_it_missed_events_and_slows_nobody(gw: tuple[Suite, Gateway]) -> None:
    _, g = gw
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: a small window)
    slow.connect(("127.0.0.1", g.port))
    slow.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                 f"Authorization: Bearer {g.token}\r\n\r\n".encode())
    try:
        for _ in range(8):
            a = request(g, "POST", "/api/v1/jobs", {"jobs": [{"task": "burst"}] * 1000})
            assert a.status == 201, a.raw
        assert request(g, "GET", "/api/v1/ping").status == 200  # the gateway answers others meanwhile
        slow.settimeout(10)
        seen = b""
        while b"event: missed" not in seen:
            chunk = slow.recv(65536)
            assert chunk, "the stream ended without a missed notice"
            seen = seen[-100:] + chunk
    finally:
        slow.close()
