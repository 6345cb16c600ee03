"""tq-gateway on real processes: tq-host and a worker from the harness, the gateway socket-activated on a port
of its own, driven over HTTP with http.client (docs/gateway.md is what each test holds it to)."""

from __future__ import annotations

import base64
import grp
import http.client
import json
import pwd
import signal
import socket
import ssl
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import MEMBER
from harness import Daemon, Gateway, Suite, request, tokens_or_skip, wait_until


@pytest.fixture
def gw(suite: Suite) -> Iterator[Gateway]:
    suite.start(workers=1)
    yield suite.gateway()


def test_submit_get_and_list_a_job(gw: Gateway) -> None:
    a = request(gw, "POST", "/api/v1/jobs", {"task": "echo", "args": ["hi"]})
    assert a.status == 201, a.raw
    (job_id,) = a.json["ids"]
    a = request(gw, "GET", f"/api/v1/jobs/{job_id}?wait=10s")
    assert a.status == 200 and a.json["job"]["state"] == "done", a.raw
    a = request(gw, "GET", "/api/v1/jobs?state=done&limit=5")
    assert [j["id"] for j in a.json["jobs"]] == [job_id]
    assert "ok" not in a.json and "rid" not in a.json


def test_submit_and_wait_answers_the_ended_job(gw: Gateway) -> None:
    a = request(gw, "POST", "/api/v1/jobs?wait=10s", {"task": "echo", "args": [1, 2]})
    assert a.status == 201, a.raw
    assert a.json["job"]["state"] == "done" and a.json["ids"] == [a.json["job"]["id"]]
    assert "more" not in a.json


def test_many_jobs_and_a_chain_in_one_request(gw: Gateway) -> None:
    a = request(gw, "POST", "/api/v1/jobs", {"jobs": [{"task": "a"}, {"task": "b", "delay": "1h"}]})
    assert a.status == 201 and len(a.json["ids"]) == 2, a.raw
    a = request(gw, "POST", "/api/v1/jobs", {"jobs": [{"task": "a"}, {"task": "b"}], "chain": True})
    assert a.status == 201 and len(a.json["ids"]) == 2, a.raw
    a = request(gw, "POST", "/api/v1/wait", {"ids": a.json["ids"], "timeout": "10s"})
    assert a.status == 200 and {j["state"] for j in a.json["jobs"]} == {"done"}, a.raw


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/api/v1/jobs/999999", None, 404, "not_found"),
    ("GET", "/api/v1/jobs/99999999999999999999999", None, 404, "not_found"),
    ("POST", "/api/v1/jobs/99999999999999999999999/cancel", None, 404, "not_found"),
    ("GET", "/api/v1/jobs/abc", None, 400, "bad_request"),
    ("GET", "/api/v1/jobs/%D9%A1", None, 400, "bad_request"),  # an Arabic-Indic 1: int() takes it, an id is ASCII
    ("GET", "/api/v1/jobs?limit=1_0", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"task": "a", "delay": "\u0663s"}, 400, "bad_request"),  # (float() takes ٣)
    ("POST", "/api/v1/wait", {"ids": [1], "timeout": "\uff13s"}, 400, "bad_request"),  # a fullwidth 3
    ("GET", "/api/v1/events?after=%D9%A3", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs", b"{not json", 400, "bad_request"),
    ("POST", "/api/v1/jobs", [1, 2], 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"task": "x", "colour": "red"}, 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"jobs": [{"task": "x", "when": 1}]}, 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"task": "a", "delay": 1e308}, 400, "bad_request"),  # past the year 9999
    ("POST", "/api/v1/jobs", {"task": "a", "at": 1e300}, 400, "bad_request"),
    ("GET", "/api/v1/jobs?colour=red", None, 400, "bad_request"),
    ("GET", "/api/v1/jobs?wait=forever", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs/cancel", {}, 400, "bad_request"),
    ("POST", "/api/v1/wait", {"id": 1, "ids": [2]}, 400, "bad_request"),  # (id was ignored)
    ("POST", "/api/v1/queues/nosuchqueue/pause", None, 404, "not_found"),
    ("DELETE", "/api/v1/workers/nosuch", None, 404, "not_found"),
    ("GET", "/api/v1/nothing-here", None, 404, "not_found"),
    ("PUT", "/api/v1/jobs", None, 405, "bad_request"),
])
def test_refusals_answer_json_with_the_codes_status(gw: Gateway, method: str, path: str, body: Any, status: int,
                                                    code: str) -> None:
    a = request(gw, method, path, body)
    assert (a.status, a.code) == (status, code), a.raw
    assert a.headers["Content-Type"].startswith("application/json")
    assert a.json["error"]["message"]


def test_wait_with_several_jobs_is_refused_in_the_apis_terms(gw: Gateway) -> None:
    for body in ({"jobs": [{"task": "a"}, {"task": "b"}]}, {"jobs": [{"task": "a"}, {"task": "b"}], "chain": True}):
        a = request(gw, "POST", "/api/v1/jobs?wait=10s", body)
        assert (a.status, a.code) == (400, "bad_request"), a.raw
        message = a.json["error"]["message"]
        assert message.startswith("?wait takes one job, not 2") and "wait_for" not in message, message
    assert request(gw, "GET", "/api/v1/jobs").json["jobs"] == []


def test_unknown_field_is_named(gw: Gateway) -> None:
    a = request(gw, "POST", "/api/v1/jobs", {"task": "x", "colour": "red"})
    assert "'colour'" in a.json["error"]["message"]
    a = request(gw, "POST", "/api/v1/jobs/1/cancel", {"x": 1})
    assert a.json["error"]["message"] == "unknown field 'x' (this request takes no body)", a.raw


def test_a_path_the_gateway_does_not_serve_is_404_naming_it_not_a_missing_job(gw: Gateway) -> None:
    a = request(gw, "GET", "/api/v1/nothing")
    assert (a.status, a.code) == (404, "not_found")
    assert a.json["error"]["message"].startswith("no route GET /api/v1/nothing"), a.raw
    assert request(gw, "GET", "/api/v1/jobs/999999").json["error"]["message"] == "no job 999999"


def test_cancel_retry_and_bulk(gw: Gateway) -> None:
    (job_id,) = request(gw, "POST", "/api/v1/jobs", {"task": "later", "delay": "1h"}).json["ids"]
    a = request(gw, "POST", f"/api/v1/jobs/{job_id}/cancel")
    assert a.status == 200 and a.json["job"]["id"] == job_id, a.raw
    assert request(gw, "GET", f"/api/v1/jobs/{job_id}").json["job"]["state"] == "cancelled"
    a = request(gw, "POST", f"/api/v1/jobs/{job_id}/cancel")
    assert (a.status, a.code) == (409, "conflict")
    a = request(gw, "POST", f"/api/v1/jobs/{job_id}/retry")
    assert a.status == 200, a.raw
    ids = request(gw, "POST", "/api/v1/jobs", {"jobs": [{"task": "later.2", "delay": "1h"}] * 2}).json["ids"]
    a = request(gw, "POST", "/api/v1/jobs/cancel", {"task": "later.2"})
    assert a.status == 200 and sorted(a.json["ids"]) == ids, a.raw
    a = request(gw, "POST", "/api/v1/jobs/retry", {"task": "later.2", "older_than": "0s"})
    assert a.status == 200 and sorted(a.json["ids"]) == ids, a.raw


def test_queues_workers_schedules_status_metrics_ping(gw: Gateway) -> None:
    for path, key in [("queues", "queues"), ("workers", "workers"), ("schedules", "schedules"),
                      ("status", "states"), ("metrics", "metrics"), ("ping", "version")]:
        a = request(gw, "GET", f"/api/v1/{path}")
        assert a.status == 200 and key in a.json, (path, a.raw)
    a = request(gw, "POST", "/api/v1/queues/default/pause")
    assert a.status == 200 and a.json["paused"] is True, a.raw
    a = request(gw, "POST", "/api/v1/queues/default/resume")
    assert a.status == 200 and a.json["paused"] is False, a.raw


def test_prometheus_text(gw: Gateway) -> None:
    a = request(gw, "GET", "/metrics")
    assert a.status == 200, a.raw
    assert a.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE" in a.raw


def test_host_down_is_503_json_and_the_gateway_recovers(suite: Suite, gw: Gateway) -> None:
    host = next(d for d in suite.daemons if d.name == "host")
    host.signal(signal.SIGTERM)
    host.wait()
    a = request(gw, "GET", "/api/v1/status")
    assert (a.status, a.code) == (503, "unavailable"), a.raw
    assert a.json["error"]["message"].startswith("tq-gateway cannot reach its tq-host at "), a.raw
    a = request(gw, "GET", "/metrics")  # (a scrape tells tq-host down from the gateway down: trial C #4)
    assert a.status == 200 and a.headers["Content-Type"].startswith("text/plain"), a.raw
    assert "\ntq_up 0.0\n" in a.raw.decode(), a.raw
    assert request(gw, "GET", "/metrics", token=None).status == 401
    suite.host()
    wait_until(lambda: request(gw, "GET", "/api/v1/status").status == 200, what="the gateway back")


def test_many_requests_in_flight_share_one_host_connection(gw: Gateway) -> None:
    """Requests that wait (a job's outcome) do not hold up the others on the same multiplexed link."""
    (slow,) = request(gw, "POST", "/api/v1/jobs", {"task": "held", "delay": "1h"}).json["ids"]
    with ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(request, gw, "GET", f"/api/v1/jobs/{slow}?wait=3s") for _ in range(4)]
        quick = [pool.submit(request, gw, "POST", "/api/v1/jobs?wait=10s", {"task": "echo", "args": [i]})
                 for i in range(4)]
        assert all(f.result().json["job"]["state"] == "done" for f in quick)
        assert not any(f.done() for f in waiting)  # the waits are still held while the quick ones came back
        assert all(f.result().json["job"]["state"] == "delayed" for f in waiting)


def test_without_a_token_the_answer_is_401_with_a_challenge(suite: Suite) -> None:
    suite.start(workers=0)
    gw = suite.gateway()
    a = request(gw, "GET", "/api/v1/status", token=None)
    assert (a.status, a.code) == (401, "unauthorized"), a.raw
    assert a.headers["WWW-Authenticate"] == 'Bearer realm="tq", Basic realm="tq"'
    a = request(gw, "GET", "/metrics", token=None)
    assert a.status == 401


def test_metrics_public_needs_no_token(suite: Suite) -> None:
    suite.write_config("[gateway]\nmetrics_public = true\n")
    suite.start(workers=0)
    gw = suite.gateway()
    a = request(gw, "GET", "/metrics", token=None)
    assert a.status == 200 and b"# TYPE" in a.raw, a.raw
    assert request(gw, "GET", "/api/v1/status", token=None).status == 401


def test_many_bad_tokens_from_one_address_are_answered_429(suite: Suite) -> None:
    tokens_or_skip()  # (a gateway not run by root may not even ask tq-host about a token: act_as, 403)
    suite.start(workers=0)
    gw = suite.gateway()
    statuses = [request(gw, "GET", "/api/v1/status", token=f"tq_not-a-token-{i}").status for i in range(25)]
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429] * 5, statuses
    a = request(gw, "GET", "/api/v1/status")  # a good token too, from that address: not even asked
    assert a.status == 429 and int(a.headers["Retry-After"]) > 0
    assert f"try again in {a.headers['Retry-After']}s" in a.json["error"]["message"], a.raw  # (they agree)
    # the lock-out is told: one warning when it starts (not one per request), and STATUS= while it lasts
    gw.daemon.notify.wait_for(lambda m: "1 address(es) answered 429 for refused tokens (127.0.0.1)" in m)
    assert gw.daemon.text().count("too many refused tokens from 127.0.0.1 (20 within") == 1, gw.daemon.text()


class Stream:
    """An SSE client: the events (and `missed` notices) read off one GET /api/v1/events."""

    def __init__(self, gw: Gateway, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
        auth = {"Authorization": f"Bearer {gw.token}"} if gw.token else {}
        self.conn.request("GET", f"/api/v1/events{query}", headers={"Accept": "text/event-stream", **auth,
                                                                    **(headers or {})})
        self.resp = self.conn.getresponse()

    def next(self, timeout: float = 20) -> tuple[str, dict[str, Any], str]:
        """(event kind, data, id) of the next event; comment lines (pings) are skipped."""
        kind, data, ident = "message", "", ""
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"no event in {timeout}s"
            line = self.resp.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line:
                if data:
                    return kind, json.loads(data), ident
                continue
            name, _, value = line.partition(": ")
            if name == "event":
                kind = value
            elif name == "data":
                data += value
            elif name == "id":
                ident = value

    def until(self, predicate: Any, timeout: float = 20) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            _, data, _ = self.next(max(0.0, deadline - time.monotonic()))
            seen.append(data)
            if predicate(data):
                return seen

    def close(self) -> None:
        self.conn.close()


def host_subscribers(suite: Suite) -> int:
    return int(suite.client().metrics()["events"]["subscribers"])


def test_sse_follows_with_filters_on_one_host_subscription(suite: Suite, gw: Gateway) -> None:
    everything, one_job = Stream(gw), None
    try:
        assert everything.resp.status == 200 and everything.resp.headers["Content-Type"] == "text/event-stream"
        wait_until(lambda: host_subscribers(suite) == 1, what="the gateway's subscription")
        (first,) = request(gw, "POST", "/api/v1/jobs", {"task": "held", "delay": "1h"}).json["ids"]
        one_job = Stream(gw, f"?job={first}&recent=10")
        assert one_job.next()[1]["event"] == "submitted"  # the replay
        request(gw, "POST", "/api/v1/jobs", {"task": "other"})
        request(gw, "POST", f"/api/v1/jobs/{first}/cancel")
        seen = everything.until(lambda e: e.get("event") == "cancelled")
        assert {e.get("task") for e in seen} >= {"held", "other"}
        cancelled = one_job.next()[1]
        assert (cancelled["event"], cancelled["job"], cancelled["task"]) == ("cancelled", first, "held")
        assert host_subscribers(suite) == 1  # two followers, one subscription
    finally:
        everything.close()
        if one_job is not None:
            one_job.close()
    wait_until(lambda: host_subscribers(suite) == 0, what="the subscription closed with its last follower")


def test_sse_resumes_after_last_event_id(gw: Gateway) -> None:
    """A follower back with Last-Event-ID (or ?after=) is replayed the events after that one, not those before.
    (tq-host compares unrounded times with the rounded one given: an event of the same instant may come again.)"""
    (job_id,) = request(gw, "POST", "/api/v1/jobs?wait=10s", {"task": "echo"}).json["ids"]
    s = Stream(gw, f"?job={job_id}&recent=100")
    try:
        everything = s.until(lambda e: e.get("event") == "done")
    finally:
        s.close()
    assert everything[0]["event"] == "submitted" and len({e["ts"] for e in everything}) > 1
    for query, headers in [(f"?job={job_id}&after={everything[0]['ts']}", {}),
                           (f"?job={job_id}", {"Last-Event-ID": str(everything[0]["ts"])})]:
        s = Stream(gw, query, headers)
        try:
            kind, data, ident = s.next()
            resumed = [data, *s.until(lambda e: e.get("event") == "done")] if data["event"] != "done" else [data]
        finally:
            s.close()
        assert kind == "message" and ident == str(data["ts"]) and data["ts"] >= everything[0]["ts"]
        assert "submitted" not in [e["event"] for e in resumed if e["ts"] > everything[0]["ts"]]
        assert resumed == everything[len(everything) - len(resumed):]


def test_sse_past_max_subscribers_is_503(suite: Suite) -> None:
    suite.write_config("[gateway]\nmax_subscribers = 1\n")
    suite.start(workers=0)
    gw = suite.gateway()
    s = Stream(gw)
    try:
        assert s.resp.status == 200
        a = request(gw, "GET", "/api/v1/events", headers={"Accept": "text/event-stream"})
        assert (a.status, a.code) == (503, "unavailable"), a.raw
        assert request(gw, "GET", "/api/v1/events?limit=5").status == 200  # the JSON list is no stream
    finally:
        s.close()


def test_sse_with_a_task_or_queue_no_job_can_have_is_refused_as_the_event_list_is(suite: Suite, gw: Gateway) -> None:
    for query, says in (("?task=%ff", "task filter: invalid task name"), ("?task=a..b", "task filter"),
                        ("?queue=%ff", "invalid queue name"), ("?queue=a%20b", "invalid queue name")):
        listed = request(gw, "GET", f"/api/v1/events{query}")
        s = Stream(gw, query)
        try:
            assert (listed.status, listed.code) == (400, "bad_request") and says in listed.raw.decode(), listed.raw
            assert s.resp.status == 400, (query, s.resp.status)  # (not a stream that shows nothing, for ever)
            assert says in s.resp.read().decode(), query
        finally:
            s.close()


FAILING = '\n[tasks.boom]\npython = "tq_test_handlers:fail"\nretries = 0\n'


@pytest.fixture
def rpc_gw(suite: Suite) -> Gateway:
    suite.write_config(FAILING)
    suite.start(workers=1)
    return suite.gateway()


def test_xmlrpc_submit_call_get_status(rpc_gw: Gateway) -> None:
    proxy = xmlrpc.client.ServerProxy(rpc_gw.rpc_url())
    job_id = proxy.submit("echo", ["a", 1])
    assert isinstance(job_id, int)
    assert proxy.call("echo", ["x", "y"]) is not None
    job = proxy.get(job_id)
    assert job["id"] == job_id and job["task"] == "echo" and "payload" not in job  # None: left out
    assert "states" in proxy.status()
    assert proxy.call("echo", ["big"], {"priority": 5}) is not None
    later = proxy.get(proxy.submit("echo", ["later"], {"delay": "1h", "timeout": "5m"}))  # durations, as the JSON API
    assert later["state"] == "delayed" and later["timeout"] == 300, later


def test_xmlrpc_a_failing_job_is_a_fault_naming_it(rpc_gw: Gateway) -> None:
    proxy = xmlrpc.client.ServerProxy(rpc_gw.rpc_url())
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy.call("boom", ["it broke"])
    assert e.value.faultCode == 1
    assert "boom" in e.value.faultString and "dead" in e.value.faultString and "it broke" in e.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy.get(999999)
    assert e.value.faultCode == 5 and "no job 999999" in e.value.faultString
    for no_id in (0, -1):  # no job could have it: a usage error, as GET /api/v1/jobs/-1 is a 400
        with pytest.raises(xmlrpc.client.Fault) as e:
            proxy.get(no_id)
        assert e.value.faultCode == 2 and "a job id" in e.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy.nosuch()
    assert e.value.faultCode == 2


def test_xmlrpc_refuses_a_doctype_before_parsing(rpc_gw: Gateway) -> None:
    laughs = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
              b"<methodCall><methodName>&b;</methodName></methodCall>")
    a = request(rpc_gw, "POST", "/RPC2", laughs, headers={"Content-Type": "text/xml"})
    assert a.status == 200
    with pytest.raises(xmlrpc.client.Fault, match="DOCTYPE"):
        xmlrpc.client.loads(a.raw)
    a = request(rpc_gw, "POST", "/RPC2", b"<methodCall><oops", headers={"Content-Type": "text/xml"})
    with pytest.raises(xmlrpc.client.Fault, match="not an XML-RPC call"):
        xmlrpc.client.loads(a.raw)


def test_xmlrpc_needs_a_token_as_basic_auth_password(suite: Suite) -> None:
    tokens_or_skip()  # (as above: without root a wrong token is 403, act_as refused)
    suite.start(workers=0)
    gw = suite.gateway()
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        xmlrpc.client.ServerProxy(f"{gw.url}/RPC2").status()
    assert e.value.errcode == 401
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        xmlrpc.client.ServerProxy(gw.rpc_url("tq_wrong")).status()
    assert e.value.errcode == 401
    assert "states" in xmlrpc.client.ServerProxy(gw.rpc_url()).status()


# ---- the daemon: listen by hand, TLS, sd_notify, reload, stop ----------------------------------------------

def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def by_hand(suite: Suite, extra: str, env: dict[str, str] | None = None) -> Daemon:
    """tq-gateway started as `tq-gateway --config FILE` (no socket from systemd)."""
    suite.write_config(extra)
    d = Daemon("gateway-by-hand", [sys.executable, "-m", "tq.gateway", "--config", str(suite.config)],
               {**suite.env, **(env or {})}, suite.dir)
    suite.daemons.append(d)
    return d


def test_by_hand_it_listens_on_gateway_listen_and_stops_cleanly_on_sigterm(suite: Suite) -> None:
    suite.start(workers=0)
    port = free_port()
    d = by_hand(suite, f'[gateway]\nlisten = "127.0.0.1:{port}"\n').ready()
    status = d.notify.wait_for(lambda m: m.startswith("STATUS="))
    assert "tq-host up" in status, status
    gw = Gateway(d, port, suite.token())
    assert request(gw, "GET", "/api/v1/ping").status == 200
    s = Stream(gw)  # an open event stream does not hold up the stop
    try:
        d.signal(signal.SIGTERM)
        assert d.wait(10) == 0
    finally:
        s.close()
    assert "STOPPING=1" in d.notify.messages
    assert "Traceback" not in d.text() and "is ignored" not in d.text()


def test_socket_activated_it_says_that_gateway_listen_is_ignored(suite: Suite) -> None:
    """systemd's socket (LISTEN_FDS) is served and `[gateway] listen`, set to another address, is not: one line
    says so, rather than leaving an operator to wonder why the address set does not answer."""
    suite.write_config('[gateway]\nlisten = "0.0.0.0:1"\n')
    suite.start(workers=0)
    gw = suite.gateway()
    assert request(gw, "GET", "/api/v1/ping").status == 200
    said = [line for line in gw.daemon.text().splitlines() if "is ignored" in line]
    assert len(said) == 1 and 'listen = "0.0.0.0:1" is ignored' in said[0] and "tq-gateway.socket" in said[0], said


def test_a_bad_configuration_is_one_line_and_exit_2(suite: Suite) -> None:
    suite.write_config('[gateway]\nlisten = "nowhere"\n')
    r = subprocess.run([sys.executable, "-m", "tq.gateway", "--config", str(suite.config)], env=suite.env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "gateway.listen" in r.stderr, r.stderr


def test_a_port_taken_is_cannot_start_exit_1(suite: Suite) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        suite.write_config(f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
        r = subprocess.run([sys.executable, "-m", "tq.gateway", "--config", str(suite.config)], env=suite.env,
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot start: cannot listen on" in r.stdout + r.stderr, r.stdout + r.stderr


def test_watchdog_pings_and_sighup_reloads(suite: Suite) -> None:
    suite.start(workers=0)
    port = free_port()
    d = by_hand(suite, f'[gateway]\nlisten = "127.0.0.1:{port}"\n', env={"WATCHDOG_USEC": "400000"}).ready()
    d.notify.wait_for(lambda m: m == "WATCHDOG=1")
    gw = Gateway(d, port, suite.token())
    assert request(gw, "GET", "/metrics").status == 200
    start = len(d.notify.messages)
    suite.write_config(f'[gateway]\nlisten = "127.0.0.1:{port}"\nmax_wait = "2s"\n')
    d.signal(signal.SIGHUP)
    d.notify.wait_for(lambda m: m.startswith("RELOADING=1"), start=start)
    d.notify.wait_for(lambda m: m == "READY=1", start=start)
    a = request(gw, "GET", "/api/v1/jobs/1?wait=3s")
    assert (a.status, a.code) == (400, "bad_request") and "at most 2s" in a.json["error"]["message"], a.raw


def test_check_config_and_a_refused_reload_in_status(suite: Suite) -> None:
    """The unit's ExecReload= runs --check-config first, so `systemctl reload` of a bad configuration fails; a
    SIGHUP with one says so in STATUS= until a reload succeeds. A changed listen under socket activation is said to
    be the socket unit's, not to take effect at a restart (trial C #7)."""
    suite.start(workers=0)
    gw = suite.gateway()
    good = suite.config.read_text()
    check = [sys.executable, "-m", "tq.gateway", "--config", str(suite.config), "--check-config"]
    r = subprocess.run(check, env=suite.env, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    suite.config.write_text(good + '\n[gateway]\nmax_wait = "banana"\n')
    r = subprocess.run(check, env=suite.env, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (2, "") and f"{suite.config}: gateway.max_wait" in r.stderr, r
    d = gw.daemon
    n = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    status = d.notify.wait_for(lambda m: m.startswith("STATUS=") and "reload refused: " in m, start=n)
    assert "gateway.max_wait" in status and "tq-host up" in status and "\n" not in status, status
    suite.config.write_text(good + '\n[gateway]\nlisten = "127.0.0.1:1"\n')
    n = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    d.notify.wait_for(lambda m: m == "READY=1", start=n)
    assert not [m for m in d.notify.messages[n:] if "reload refused" in m], d.notify.messages[n:]
    log = d.text()
    assert "ListenStream=" in log and "takes effect at the next restart" not in log, log
    assert request(gw, "GET", "/api/v1/ping").status == 200
    unit = (Path(__file__).parents[2] / "units" / "tq-gateway.service").read_text()
    assert "ExecReload=/usr/bin/tq-gateway --check-config\nExecReload=/bin/kill -HUP $MAINPID" in unit


def test_tls_when_cert_and_key_are_set(suite: Suite) -> None:
    cert, key = suite.dir / "cert.pem", suite.dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    suite.start(workers=0)
    port = free_port()
    by_hand(suite, f'[gateway]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n').ready()
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/api/v1/ping", headers={"Authorization": f"Bearer {suite.token()}"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_an_encrypted_tls_key_is_one_line_and_cannot_start_not_a_prompt(suite: Suite) -> None:
    cert, key = suite.dir / "cert.pem", suite.dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:secret", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    suite.write_config(f'[gateway]\nlisten = "127.0.0.1:{free_port()}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    r = subprocess.run([sys.executable, "-m", "tq.gateway", "--config", str(suite.config)], env=suite.env,
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, start_new_session=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and out.count("\n") == 1 and "PEM pass phrase" not in out, out
    assert f"the key is encrypted: tq-gateway needs an unencrypted key (openssl pkey -in {key}" in out, out


# ---- tokens: each request acts as the token's user ---------------------------------------------------------

def test_whoami_and_the_token_routes(suite: Suite, member: pwd.struct_passwd, gw: Gateway) -> None:
    a = request(gw, "GET", "/api/v1/whoami")
    assert a.status == 200 and a.json["user"] == "root" and a.json["read_only"] is False, a.raw
    a = request(gw, "POST", "/api/v1/tokens", {"name": "ro", "user": MEMBER, "read_only": True})
    assert a.status == 201 and a.json["token"].startswith("tq_"), a.raw
    ro = a.json["token"]
    assert "ro" in [t["name"] for t in request(gw, "GET", "/api/v1/tokens").json["tokens"]]
    a = request(gw, "GET", "/api/v1/whoami", token=ro)
    assert a.json == {"user": MEMBER, "token": "ro", "read_only": True, "uid": member.pw_uid, "may_steer": False}, a.raw
    assert request(gw, "GET", "/api/v1/tokens", token=ro).status == 403  # only root and admins manage tokens
    a = request(gw, "DELETE", "/api/v1/tokens/ro")
    assert a.status == 200, a.raw
    a = request(gw, "GET", "/api/v1/whoami", token=ro)  # its connection acted already: cut by the revocation
    assert (a.status, a.code) == (401, "unauthorized"), a.raw
    assert request(gw, "GET", "/api/v1/whoami", token=ro).json == a.json  # (remembered, with tq-host's reason)
    assert request(gw, "DELETE", "/api/v1/tokens/ro").status == 404


def test_a_refused_token_is_refused_again_for_tq_hosts_reason(suite: Suite, member: pwd.struct_passwd,
                                                             gw: Gateway) -> None:
    """The gateway remembers a refused token (against guessing) and answers the next request itself: with the
    reason tq-host gave, not a generic one (here the token's user was deleted)."""
    theirs = suite.token(MEMBER)
    subprocess.run(["userdel", MEMBER], check=True)
    first, again = (request(gw, "GET", "/api/v1/whoami", token=theirs) for _ in range(2))
    assert (first.status, first.code) == (401, "unauthorized"), first.raw
    assert f"no user '{MEMBER}' on this system now" in first.json["error"]["message"], first.raw
    assert (again.status, again.json) == (first.status, first.json)


def test_whoami_says_what_the_token_may_do_now(suite: Suite, member: pwd.struct_passwd, gw: Gateway) -> None:
    """may_steer follows tq-host's rules as they are at each whoami, not as they were when the token's link acted
    (the page re-reads it to show or hide its buttons): here the member's group is made an admin group, then not."""
    theirs = suite.token(MEMBER)
    host = next(d for d in suite.daemons if d.name == "host")
    plain = suite.config.read_text()
    assert request(gw, "GET", "/api/v1/whoami", token=theirs).json["may_steer"] is False
    suite.config.write_text(plain + f'\n[access]\nadmins = ["{grp.getgrgid(member.pw_gid).gr_name}"]\n')
    host.reload()
    a = request(gw, "GET", "/api/v1/whoami", token=theirs)
    assert a.json == {"user": MEMBER, "token": a.json["token"], "read_only": False, "uid": member.pw_uid,
                      "may_steer": True}, a.raw
    assert request(gw, "POST", "/api/v1/queues/default/pause", token=theirs).status == 200  # (tq-host agrees)
    suite.config.write_text(plain)
    host.reload()
    assert request(gw, "GET", "/api/v1/whoami", token=theirs).json["may_steer"] is False
    assert request(gw, "POST", "/api/v1/queues/default/resume", token=theirs).status == 403
    local = suite.client().call("whoami")  # (a local connection: its own uid's)
    assert (local["user"], local["token"], local["uid"], local["may_steer"]) == ("root", None, 0, True), local


def test_a_read_only_token_reads_and_changes_nothing(suite: Suite, gw: Gateway) -> None:
    ro = suite.token("root", read_only=True)
    (job_id,) = request(gw, "POST", "/api/v1/jobs", {"task": "x", "delay": "1h"}).json["ids"]
    assert request(gw, "GET", f"/api/v1/jobs/{job_id}", token=ro).status == 200
    for method, path, body in [("POST", "/api/v1/jobs", {"task": "x"}), ("POST", f"/api/v1/jobs/{job_id}/cancel",
                                                                         None),
                               ("POST", "/api/v1/queues/default/pause", None)]:
        a = request(gw, method, path, body, token=ro)
        assert (a.status, a.code) == (403, "permission"), (path, a.raw)
        assert "read-only" in a.json["error"]["message"]


def test_a_users_token_is_held_to_that_users_access_rules(suite: Suite, member: pwd.struct_passwd,
                                                          gw: Gateway) -> None:
    theirs_token = suite.token(MEMBER)
    (roots,) = request(gw, "POST", "/api/v1/jobs", {"task": "x", "delay": "1h"}).json["ids"]
    (theirs,) = request(gw, "POST", "/api/v1/jobs", {"task": "x", "delay": "1h"}, token=theirs_token).json["ids"]
    a = request(gw, "POST", f"/api/v1/jobs/{roots}/cancel", token=theirs_token)
    assert (a.status, a.code) == (403, "permission"), a.raw
    assert request(gw, "POST", f"/api/v1/jobs/{theirs}/cancel", token=theirs_token).status == 200
    assert request(gw, "GET", f"/api/v1/jobs/{theirs}").json["job"]["submitter"] != 0


def test_the_token_in_a_cookie_or_as_basic_password(suite: Suite, gw: Gateway) -> None:
    a = request(gw, "GET", "/api/v1/whoami", token=None, headers={"Cookie": f"tq_token={gw.token}"})
    assert a.status == 200 and a.json["user"] == "root", a.raw
    basic = base64.b64encode(f"anyone:{gw.token}".encode()).decode()
    a = request(gw, "GET", "/api/v1/whoami", token=None, headers={"Authorization": f"Basic {basic}"})
    assert a.status == 200, a.raw
    a = request(gw, "GET", "/api/v1/whoami", token="tq_unknown")
    assert (a.status, a.code) == (401, "unauthorized") and "WWW-Authenticate" in a.headers, a.raw


def test_list_pages_with_after_and_a_wait_past_its_time_is_504(gw: Gateway) -> None:
    ids = request(gw, "POST", "/api/v1/jobs", {"jobs": [{"task": "page", "delay": "1h"}] * 5}).json["ids"]
    first = request(gw, "GET", "/api/v1/jobs?task=page&limit=2").json["jobs"]
    assert [j["id"] for j in first] == ids[::-1][:2]
    rest = request(gw, "GET", f"/api/v1/jobs?task=page&limit=10&after={first[-1]['id']}").json["jobs"]
    assert [j["id"] for j in rest] == ids[::-1][2:]
    a = request(gw, "POST", "/api/v1/jobs?wait=0.3s", {"task": "later", "delay": "1h"})
    assert (a.status, a.code) == (504, "timeout"), a.raw
    assert "did not finish in time" in a.json["error"]["message"]
    a = request(gw, "POST", "/api/v1/wait", {"id": ids[0], "timeout": "0.2s"})
    assert (a.status, a.code) == (504, "timeout"), a.raw
    events = request(gw, "GET", "/api/v1/events?task=page").json["events"]
    assert len(events) == 5
    later = request(gw, "GET", f"/api/v1/events?task=page&after={events[0]['ts'] - 1}").json["events"]
    assert [e for e in later if "event" in e] == events  # (after the host's start: told what it cannot know)


def test_a_refused_submit_and_wait_answers_at_once_and_the_link_stays(suite: Suite) -> None:
    suite.write_config("", echo_catch_all=False)
    suite.start(workers=0)
    gw = suite.gateway()
    a = request(gw, "POST", "/api/v1/jobs?wait=10s", {"task": "nosuch"}, timeout=5)
    assert (a.status, a.code) == (422, "unknown_task"), a.raw
    assert request(gw, "GET", "/api/v1/ping").status == 200


def test_sse_follows_on_across_a_host_restart_and_says_what_it_cannot_know(suite: Suite, gw: Gateway) -> None:
    s = Stream(gw)
    try:
        request(gw, "POST", "/api/v1/jobs", {"task": "before"})
        s.until(lambda e: e.get("task") == "before")
        restart_host_then_submit(suite, gw, "after")
        seen = s.until(lambda e: e.get("task") == "after")
        assert {"missed": None} in [{"missed": e["missed"]} for e in seen if "missed" in e], seen
    finally:
        s.close()


def test_sse_of_a_revoked_token_ends_before_an_event_after_the_revocation(suite: Suite, gw: Gateway) -> None:
    """README: a revoked token is refused from then on, on connections already using it too: its open stream
    gets no event that happened after the revocation, and ends saying why (`event: end`, as /api/v1/live)."""
    token = suite.token(name="follows")
    s = Stream(gw, headers={"Authorization": f"Bearer {token}"})
    try:
        assert s.resp.status == 200
        request(gw, "POST", "/api/v1/jobs", {"task": "seen"})
        s.until(lambda e: e.get("task") == "seen")
        suite.client().token_revoke("follows")
        request(gw, "POST", "/api/v1/jobs", {"task": "unseen"})
        rest, deadline = "", time.monotonic() + 20
        while "unseen" not in rest and time.monotonic() < deadline and (line := s.resp.readline().decode()):
            rest += line  # (to the stream's end, at most 20 s: a ping comes every 15 s)
        sock = s.conn.sock  # the connection closes with the stream (it stayed open request_timeout: trial C #10)
        if sock is not None:
            sock.settimeout(3)
            assert sock.recv(1) == b""
    finally:
        s.close()
    assert "unseen" not in rest and "event: end\n" in rest and '"code":"unauthorized"' in rest, rest


def test_sse_on_a_quiet_stream_follows_on_across_a_host_restart(suite: Suite, gw: Gateway) -> None:
    """No event passed before tq-host went: the subscription made again still asks for what came since it was
    first made, so a job submitted the moment tq-host is back is seen, after tq-host's notice of its restart."""
    s = Stream(gw)
    try:
        wait_until(lambda: host_subscribers(suite) == 1, what="the gateway's subscription")
        restart_host_then_submit(suite, gw, "after")
        seen = s.until(lambda e: e.get("task") == "after")
        assert seen[0]["missed"] is None and "restart" in seen[0]["reason"], seen
    finally:
        s.close()


@pytest.mark.parametrize(("body", "words"), [
    (b'{"task": "a", "args": [NaN]}', "NaN is not a JSON number"),
    (b'{"task": "a", "args": [-Infinity]}', "-Infinity is not a JSON number"),
    (b'{"task": "a", "args": ["\\ud800"]}', "text must be UTF-8"),
    (b'{"task": "a", "args": [1e400]}', "1e400 is too large a number"),
    (b'{"task": "a", "priority": 1e400}', "1e400 is too large a number"),
    (b'{"task": "a", "delay": -1e400}', "-1e400 is too large a number"),
])
def test_a_body_with_nan_infinity_or_a_lone_surrogate_is_400_naming_it(gw: Gateway, body: bytes, words: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)  # (at once: 1e400 hung for 30s)
    try:
        conn.request("POST", "/api/v1/jobs", body=body, headers={"Authorization": f"Bearer {gw.token}",
                                                                 "Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 400 and words in answer["error"]["message"], answer
    assert request(gw, "GET", "/api/v1/jobs").json["jobs"] == []


NIL_CALLS = [b"<?xml version='1.0'?><methodCall><methodName>status</methodName><params><param><value><nil/></value>"
             b"</param></params></methodCall>",
             b"<?xml version='1.0'?><methodCall><methodName><nil/></methodName></methodCall>",
             b"<?xml version='1.0'?><methodCall><methodName>status</methodName><nil/></methodCall>",
             b"<?xml version='1.0'?><methodCall><nil/></methodCall>",
             b"<?xml version='1.0'?><methodCall><methodName>get</methodName><params><param><value><nil/></value>"
             b"</param></params></methodCall>"]


def test_xmlrpc_values_json_has_not_are_fault_2(rpc_gw: Gateway) -> None:
    """docs/gateway.md: a malformed call is faultCode 2 (a dateTime, base64 or nil tq cannot take: not 500)."""
    proxy = xmlrpc.client.ServerProxy(rpc_gw.rpc_url(), allow_none=True)
    for body in NIL_CALLS:
        a = request(rpc_gw, "POST", "/RPC2", body, headers={"Content-Type": "text/xml"})
        assert a.status == 200, (body, a.raw)
        with pytest.raises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(a.raw)
        assert e.value.faultCode == 2, (body, e.value)
    for call in (lambda: proxy.submit("hello", [xmlrpc.client.Binary(b"\0")]),
                 lambda: proxy.submit("hello", [], {"at": xmlrpc.client.DateTime(time.time())}),
                 lambda: proxy.call("hello", [{"when": xmlrpc.client.DateTime(time.time())}])):
        with pytest.raises(xmlrpc.client.Fault) as e:
            call()
        assert e.value.faultCode == 2 and ("dateTime" in e.value.faultString or "base64" in e.value.faultString)
    big = xmlrpc_call(rpc_gw, "submit", "<string>hello</string>", "<array><data><value><bigdecimal>1.5</bigdecimal>"
                                      "</value></data></array>")  # (a Decimal: no JSON number; it was a 500)
    assert big is not None and big.faultCode == 2 and "bigdecimal" in big.faultString, big
    assert request(rpc_gw, "GET", "/api/v1/jobs").json["jobs"] == []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_xmlrpc_a_double_json_has_not_is_fault_2_at_once(rpc_gw: Gateway, value: str) -> None:
    """A NaN or infinite double would be refused by tq-host as a line it cannot read (trial C §1: 30s, then 503)."""
    v = f"<value><double>{value}</double></value>"
    for params in (f"<param><value><array><data>{v}</data></array></value></param>",
                   f"<param><value><array><data></data></array></value></param><param><value><struct><member>"
                   f"<name>delay</name>{v}</member></struct></value></param>"):
        body = (f"<?xml version='1.0'?><methodCall><methodName>submit</methodName><params><param><value><string>"
                f"hello</string></value></param>{params}</params></methodCall>").encode()
        a = request(rpc_gw, "POST", "/RPC2", body, headers={"Content-Type": "text/xml"}, timeout=10)
        with pytest.raises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(a.raw)
        assert e.value.faultCode == 2 and "JSON" in e.value.faultString, e.value
    assert request(rpc_gw, "GET", "/api/v1/jobs").json["jobs"] == []


def xmlrpc_call(gw: Gateway, method: str, *values: str) -> xmlrpc.client.Fault | None:
    """A call written by hand, each of `values` one parameter as XML (`<int>1</int>`): its fault, or None."""
    params = "".join(f"<param><value>{v}</value></param>" for v in values)
    body = f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>"
    a = request(gw, "POST", "/RPC2", body.encode(), headers={"Content-Type": "text/xml"}, timeout=10)
    try:
        xmlrpc.client.loads(a.raw)
    except xmlrpc.client.Fault as e:
        return e
    return None


@pytest.mark.parametrize(("value", "words"), [("<int>\u0661</int>", "digits 0-9"), ("<i4>\uff11</i4>", "digits 0-9"),
                                              ("<int>1_0</int>", "digits 0-9"), ("<double>\u0661.5</double>", "0-9"),
                                              ("<string>\u0661s</string>", "is not a duration")])
def test_xmlrpc_a_number_in_other_digits_than_ascii_is_fault_2(rpc_gw: Gateway, value: str, words: str) -> None:
    """int() and float() take other scripts' digits (Arabic-Indic, fullwidth): a number is ASCII, as an id is."""
    options = f"<struct><member><name>delay</name><value>{value}</value></member></struct>"
    faults = [xmlrpc_call(rpc_gw, "submit", "<string>hello</string>", "<array><data></data></array>", options)]
    if "<string>" not in value:
        faults.append(xmlrpc_call(rpc_gw, "get", value))
    for fault in faults:
        assert fault is not None and fault.faultCode == 2 and words in fault.faultString, (value, fault)
    assert request(rpc_gw, "GET", "/api/v1/jobs").json["jobs"] == []
    assert xmlrpc_call(rpc_gw, "submit", "<string>hello</string>", "<array><data><value><i4> -12 </i4></value>"
                                         "<value><double>+1.5e3</double></value></data></array>") is None


def test_xmlrpc_get_of_a_deeply_nested_job_answers(rpc_gw: Gateway) -> None:
    deep: list[Any] = ["bottom"]
    for _ in range(900):
        deep = [deep]
    a = request(rpc_gw, "POST", "/api/v1/jobs", {"task": "deep", "args": deep, "delay": "1h"})
    assert a.status == 201, a.raw
    (job_id,) = a.json["ids"]
    proxy = xmlrpc.client.ServerProxy(rpc_gw.rpc_url())
    try:
        job = proxy.get(job_id)
    except xmlrpc.client.Fault as e:
        assert e.faultCode == 2 and "too deep" in e.faultString and f"/api/v1/jobs/{job_id}" in e.faultString
    else:
        assert job["id"] == job_id
    for _ in range(750):  # (150 deep: the client's own writer recurses too)
        deep = deep[0]
    with pytest.raises(xmlrpc.client.Fault) as f:
        proxy.submit("deep", deep)
    assert f.value.faultCode == 2 and "too deep" in f.value.faultString


def restart_host_then_submit(suite: Suite, gw: Gateway, task: str) -> None:
    """Stop tq-host, start it again, and submit a job of `task` through the gateway as soon as it takes one."""
    host = next(d for d in suite.daemons if d.name == "host")
    host.signal(signal.SIGTERM)
    host.wait()
    suite.host()
    wait_until(lambda: request(gw, "POST", "/api/v1/jobs", {"task": task}).status == 201,
               what="the gateway back to tq-host")
