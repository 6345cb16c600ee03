"""tq-gateway on real processes: tq-host and a worker from the harness, the gateway socket-activated on a port
of its own, driven over HTTP with http.client (docs/gateway.md is what each test holds it to)."""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness import Gateway, Suite, wait_until

ANONYMOUS = {"TQ_GATEWAY_TEST_ANONYMOUS": "1"}


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.raw = status, headers, body

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str:
        return str(self.json["error"]["code"])


def request(gw: Gateway, method: str, path: str, body: Any = None, token: str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture
def gw(suite: Suite) -> Iterator[Gateway]:
    suite.start(workers=1)
    yield suite.gateway(env=ANONYMOUS)


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
    ("GET", "/api/v1/jobs/abc", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs", b"{not json", 400, "bad_request"),
    ("POST", "/api/v1/jobs", [1, 2], 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"task": "x", "colour": "red"}, 400, "bad_request"),
    ("POST", "/api/v1/jobs", {"jobs": [{"task": "x", "when": 1}]}, 400, "bad_request"),
    ("GET", "/api/v1/jobs?colour=red", None, 400, "bad_request"),
    ("GET", "/api/v1/jobs?wait=forever", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs/cancel", {}, 400, "bad_request"),
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


def test_unknown_field_is_named(gw: Gateway) -> None:
    a = request(gw, "POST", "/api/v1/jobs", {"task": "x", "colour": "red"})
    assert "'colour'" in a.json["error"]["message"]


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
    assert "tq-host is not reachable" in a.json["error"]["message"]
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
    a = request(gw, "GET", "/api/v1/status")
    assert (a.status, a.code) == (401, "unauthorized"), a.raw
    assert a.headers["WWW-Authenticate"] == 'Bearer realm="tq", Basic realm="tq"'
    a = request(gw, "GET", "/metrics")
    assert a.status == 401


def test_metrics_public_needs_no_token(suite: Suite) -> None:
    suite.write_config("[gateway]\nmetrics_public = true\n")
    suite.start(workers=0)
    gw = suite.gateway()
    a = request(gw, "GET", "/metrics")
    assert a.status == 200 and b"# TYPE" in a.raw, a.raw
    assert request(gw, "GET", "/api/v1/status").status == 401


def test_many_bad_tokens_from_one_address_are_answered_429(suite: Suite) -> None:
    suite.start(workers=0)
    gw = suite.gateway()
    statuses = [request(gw, "GET", "/api/v1/status", token="x" * 600 + str(i)).status for i in range(25)]
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429] * 5, statuses
    a = request(gw, "GET", "/api/v1/status", token="x" * 600)
    assert a.status == 429 and int(a.headers["Retry-After"]) > 0
