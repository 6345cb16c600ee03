"""The dashboard (tq-gateway's GET /) on real processes: tq-host, a worker and the gateway from the harness, driven
over HTTP and in a real headless Chromium (tests/browser/dashboard.py, run by Debian's python with its selenium).

Outside CI a missing Chromium skips the browser test, loudly; with TQ_REQUIRE_SYSTEM_TESTS=1 (CI) it fails instead.
"""

from __future__ import annotations

import asyncio
import grp
import http.client
import json
import logging
import os
import pwd
import signal
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MEMBER
from harness import ROOT, Answer, Gateway, Suite, request, tokens_or_skip
from tq.gateway.hostlink import HostLinks
from tq.gateway.summary import Summary

BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver", "/usr/bin/python3")
FLAKY = 21  # dead jobs of the task that succeeds once its marker file is gone (more than a page of 20 with BROKEN)
FLAKY_ERROR = "flaky: the marker file is there"
FORM = "application/x-www-form-urlencoded"


def token(suite: Suite, name: str, user: str = "root", read_only: bool = False) -> str:
    """A token as an admin makes one: tqctl token create prints it alone (without root: skipped, NO_TOKENS)."""
    tokens_or_skip()
    made = suite.tqctl("token", "create", name, "--user", user, *(["--read-only"] if read_only else []))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def page(gw: Gateway, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    """A request as a browser makes it: no Authorization header (a token, if any, in the cookie)."""
    return request(gw, method, path, body, token=None, headers=headers)


def login(gw: Gateway, value: str, headers: dict[str, str] | None = None) -> Answer:
    return page(gw, "POST", "/login", urllib.parse.urlencode({"token": value}).encode(),
                {"Content-Type": FORM, **(headers or {})})


@pytest.fixture
def gw(suite: Suite) -> Iterator[Gateway]:
    marker = suite.dir / "flaky.marker"
    suite.write_config(f"""
[tasks.flaky]
command = ["sh", "-c", "if [ -e {marker} ]; then echo '{FLAKY_ERROR}' >&2; exit 3; fi"]
retries = 0

[tasks.broken]
command = ["sh", "-c", "echo 'broken: always' >&2; exit 1"]
retries = 0
""")
    suite.start(workers=1)
    yield suite.gateway(token=False)


# ---- the page over HTTP ---------------------------------------------------------------------------------------

def test_without_a_token_the_page_is_the_login_form(gw: Gateway) -> None:
    a = page(gw, "GET", "/")
    assert a.status == 200 and b'action="/login"' in a.raw, a.raw
    assert "WWW-Authenticate" not in a.headers  # (a browser would ask for basic authentication)
    assert "default-src 'none'" in a.headers["Content-Security-Policy"]


def test_login_checks_the_token_then_sets_a_strict_httponly_cookie(suite: Suite, gw: Gateway) -> None:
    a = login(gw, "tq_not-a-token")
    assert a.status == 403 and b'id="login-error"' in a.raw and b'action="/login"' in a.raw, a.raw
    assert page(gw, "GET", "/login").headers["Location"] == "/"  # (the refused form's address, reloaded)
    assert "Set-Cookie" not in a.headers
    good = token(suite, "page")
    a = login(gw, good)
    assert a.status == 303 and a.headers["Location"] == "/", a.raw
    cookie = a.headers["Set-Cookie"]
    assert cookie.startswith(f"tq_token={good};"), cookie
    assert {"HttpOnly", "Path=/", "SameSite=Strict"} <= {p.strip() for p in cookie.split(";")}, cookie
    assert "Secure" not in cookie  # (plain HTTP here; under TLS it is set)
    a = page(gw, "GET", "/", headers={"Cookie": f"tq_token={good}"})
    assert a.status == 200 and b'src="/static/app.js"' in a.raw, a.raw
    a = page(gw, "POST", "/logout", headers={"Cookie": f"tq_token={good}", "X-TQ-Page": "1"})
    assert a.status == 303 and 'tq_token=""' in a.headers["Set-Cookie"], a.headers


@pytest.mark.parametrize(("body", "kind"), [
    (b"--x\r\nContent-Disposition: form-data; name=token\r\n\r\nabc", "multipart/form-data; boundary=x"),
    (b"token=x", "multipart/form-data"), (b"\xff\xfe=\xff", FORM), (b"token=%ff%fe", FORM),
    (b"token=" + b"a" * 600, FORM), (b"token=a%0Ab", FORM), (b'{"token": "x"}', "application/json"),
])
def test_a_malformed_login_gets_the_form_again(gw: Gateway, body: bytes, kind: str) -> None:
    a = page(gw, "POST", "/login", body, {"Content-Type": kind})
    assert a.status in (400, 403) and b'id="login-error"' in a.raw, a.raw
    assert "Set-Cookie" not in a.headers


def test_a_login_from_another_site_is_refused(suite: Suite, gw: Gateway) -> None:
    a = login(gw, token(suite, "page"), {"Origin": "https://evil.example"})
    assert a.status == 403 and "Set-Cookie" not in a.headers, a.raw


def test_a_cookie_post_needs_the_page_header_or_its_own_origin(suite: Suite, gw: Gateway) -> None:
    good = token(suite, "page")
    cookie = {"Cookie": f"tq_token={good}"}
    a = page(gw, "POST", "/api/v1/queues/default/pause", headers={**cookie, "Origin": "https://evil.example"})
    assert a.status == 403 and a.json["error"]["code"] == "permission", a.raw
    a = page(gw, "POST", "/api/v1/queues/default/pause", headers=cookie)
    assert a.status == 403, a.raw
    assert page(gw, "GET", "/api/v1/queues", headers=cookie).status == 200  # reading needs neither
    a = page(gw, "POST", "/api/v1/queues/default/pause", headers={**cookie, "X-TQ-Page": "1"})
    assert a.status == 200 and a.json["paused"] is True, a.raw
    a = page(gw, "POST", "/api/v1/queues/default/resume",
                headers={**cookie, "Origin": f"http://127.0.0.1:{gw.port}"})
    assert a.status == 200 and a.json["paused"] is False, a.raw


def test_static_files_are_served_with_an_etag(gw: Gateway) -> None:
    for name in ("app.js", "style.css"):
        a = page(gw, "GET", f"/static/{name}")
        assert a.status == 200 and a.raw == (ROOT / "daemons/tq/gateway/static" / name).read_bytes()
        assert page(gw, "GET", f"/static/{name}", headers={"If-None-Match": a.headers["ETag"]}).status == 304
    assert page(gw, "GET", "/static/../page.py").status == 404
    assert page(gw, "GET", "/static/index.html").status == 404


def test_the_live_stream_needs_a_token_and_sends_a_summary_a_second(suite: Suite, gw: Gateway) -> None:
    assert page(gw, "GET", "/api/v1/live").status == 401
    good = token(suite, "live")
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", "/api/v1/live", headers={"Authorization": f"Bearer {good}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = read_event(resp)
        job_id = suite.client().submit("echo", "live")
        suite.client().wait(job_id, timeout=10)
        later = first
        while later["finished"]["done"] == first["finished"]["done"]:
            later = read_event(resp)
    finally:
        conn.close()
    assert [q["queue"] for q in first["queues"]] == ["default"]
    assert [w["instance"] for w in first["workers"]] == ["1"] and first["workers"][0]["rss_bytes"] > 0
    assert later["finished"]["done"] == first["finished"]["done"] + 1
    assert 0.5 < later["time"] - first["time"] < 10


def read_event(resp: http.client.HTTPResponse) -> dict[str, Any]:
    """The next event's data (with its name under "event" when it has one)."""
    name = None
    while True:
        line = resp.readline()
        assert line, "the stream ended"
        if line.startswith(b"event: "):
            name = line[7:].strip().decode()
        if line.startswith(b"data: "):
            return dict(json.loads(line[6:])) | ({"event": name} if name else {})


def live(gw: Gateway, value: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("GET", "/api/v1/live", headers={"Authorization": f"Bearer {value}"})
    return conn, conn.getresponse()


def test_the_live_stream_says_when_tq_host_is_down(suite: Suite, gw: Gateway) -> None:
    conn, resp = live(gw, token(suite, "live"))
    try:
        assert "queues" in read_event(resp)
        host = next(d for d in suite.daemons if d.name == "host")
        host.signal(signal.SIGTERM)
        host.wait()
        event = read_event(resp)
        while "error" not in event:
            event = read_event(resp)
    finally:
        conn.close()
    assert event["error"]["code"] == "unavailable" and event["time"] > 0


def test_a_revoked_tokens_live_stream_ends(suite: Suite, gw: Gateway) -> None:
    conn, resp = live(gw, token(suite, "gone"))
    try:
        read_event(resp)
        assert suite.tqctl("token", "revoke", "gone").returncode == 0
        event = read_event(resp)
        while "event" not in event:  # (the token is asked again within RECHECK seconds)
            event = read_event(resp)
    finally:
        conn.close()
    assert event["event"] == "end" and event["error"]["code"] == "unauthorized", event


def test_live_pages_past_max_subscribers_are_503(suite: Suite, gw: Gateway) -> None:
    suite.config.write_text(suite.config.read_text() + "\n[gateway]\nmax_subscribers = 1\n")
    seen = len(gw.daemon.notify.messages)
    gw.daemon.signal(signal.SIGHUP)
    gw.daemon.notify.wait_for(lambda m: m == "READY=1", start=seen)  # (sent once the reload is done)
    first = token(suite, "first")
    conn, resp = live(gw, first)
    try:
        read_event(resp)
        a = request(gw, "GET", "/api/v1/live", token=first)
        assert a.status == 503 and a.json["error"]["code"] == "unavailable", a.raw
    finally:
        conn.close()


# ---- the summary: one poll shared by every page, none without a page, a slow page skips to the newest ---------

def test_one_poll_a_second_serves_every_page_and_none_runs_without_one(suite: Suite, gw: Gateway) -> None:
    logger = logging.getLogger("test")
    links = HostLinks(str(suite.dir / "tq.sock"), 4, logger)

    async def scenario() -> None:
        try:
            await pages_share_one_poll(Summary(links, logger, interval=0.05))
        finally:
            links.close()

    async def pages_share_one_poll(summary: Summary) -> None:
        pages = [summary.join() for _ in range(5)]
        slow = pages.pop()
        for _ in range(10):
            frames = [await page.take() for page in pages]
            assert len(set(frames)) == 1  # every page got the same summary
        assert 10 <= summary.polls <= 11, summary.polls  # one poll per summary, not one per page
        newest = await slow.take()  # it read nothing for 10 summaries: it gets the newest, once
        assert newest == summary.latest and not slow.ready.is_set()
        assert json.loads(newest[6:])["queues"][0]["queue"] == "default"
        for page in [*pages, slow]:
            summary.leave(page)
        polls = summary.polls
        await asyncio.sleep(0.5)  # (ten intervals: a poller left running would poll)
        assert summary.polls == polls and not summary.latest

    asyncio.run(scenario())


def test_a_metrics_reply_of_another_shape_is_a_summary_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("test")
    links = HostLinks("/nonexistent/tq.sock", 1, logger)

    async def odd(op: str, wait: float = 0.0, **fields: Any) -> dict[str, Any]:
        return {"metrics": {"finished": [["default", "echo"]]}}  # (a row of another shape)

    monkeypatch.setattr(links.own, "call", odd)
    summary = asyncio.run(Summary(links, logger).poll())
    assert summary["error"]["code"] == "internal" and "time" in summary


# ---- in Chromium ----------------------------------------------------------------------------------------------

def browser_or_skip() -> None:
    missing = [p for p in BROWSER if not os.path.exists(p)]
    if not missing and subprocess.run([BROWSER[2], "-c", "import selenium"], capture_output=True).returncode:
        missing.append("python3-selenium")
    if not missing:
        return
    message = (f"DASHBOARD BROWSER TEST NOT RUN: missing {', '.join(missing)} "
               f"(apt-get install chromium chromium-driver python3-selenium)")
    if os.environ.get("TQ_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(message, pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


class Traffic:
    """Jobs submitted in the background while the browser looks, so the chart has something to draw."""

    def __init__(self, suite: Suite) -> None:
        self.client = suite.client()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.client.submit_many([("echo", ["tick"])] * 4)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def drive(argv: list[str], steps: dict[str, Callable[[], None]], err: Path, timeout: float) -> tuple[int, str]:
    """Run the browser script (without PYTHONPATH: Debian's python), doing each step it asks for on the way (it
    writes `step NAME` and waits for `done`); its exit status and the rest of what it wrote. Killed past `timeout`
    seconds; its stderr goes to `err`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(err, "w") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    out = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("step "):
                out.append(line)
                continue
            steps[line.removeprefix("step ").strip()]()
            proc.stdin.write("done\n")
            proc.stdin.flush()
        return proc.wait(), "".join(out)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def admins(suite: Suite, *groups: str) -> None:
    """tq-host's [access] admins made `groups` (none: the fixture's configuration), taken by a reload."""
    plain = suite.config.read_text().partition("\n[access]\n")[0]
    suite.config.write_text(plain + (f"\n[access]\nadmins = {json.dumps(list(groups))}\n" if groups else ""))
    next(d for d in suite.daemons if d.name == "host").reload()


def test_dashboard_in_chromium(suite: Suite, member: pwd.struct_passwd, gw: Gateway, tmp_path: Path) -> None:
    browser_or_skip()
    c = suite.client()
    members = token(suite, "member", MEMBER)
    (own,) = request(gw, "POST", "/api/v1/jobs", {"task": "broken"}, token=members).json["ids"]
    marker = suite.dir / "flaky.marker"
    marker.touch()
    flaky = [c.submit("flaky", str(i)) for i in range(FLAKY)]
    broken = c.submit("broken")
    delayed = [c.submit("echo", "later", delay=3600) for _ in range(3)]
    c.wait_many([*flaky, broken, own], timeout=60)
    assert {c.get(i)["state"] for i in [*flaky, broken]} == {"dead"}
    marker.unlink()  # a retried flaky job is done
    screenshot = tmp_path / "dashboard.png"
    argv = [BROWSER[2], str(ROOT / "tests/browser/dashboard.py"), "--url", f"http://127.0.0.1:{gw.port}",
            "--token", token(suite, "admin"), "--read-only-token", token(suite, "viewer", MEMBER, True),
            "--member-token", members, "--member-job", str(own), "--rights-change",
            "--bad-token", "tq_wrong", "--queue", "default", "--delayed", str(len(delayed)), "--worker", "1",
            "--dead", *map(str, flaky[-19:]), "--retry", str(flaky[-1]), "--error", FLAKY_ERROR,
            "--bulk-task", "flaky", "--bulk-count", str(FLAKY - 1), "--screenshot", str(screenshot)]
    steps = {"admin": lambda: admins(suite, grp.getgrgid(member.pw_gid).gr_name), "no-admin": lambda: admins(suite)}
    err = tmp_path / "dashboard.err"
    with Traffic(suite):
        status, stdout = drive(argv, steps, err, timeout=300)
    print(f"screenshot: {screenshot}")
    assert status == 0, err.read_text()[-3000:]
    out = json.loads(stdout.splitlines()[-1])
    print(f"first load (bytes transferred): {out['first_load_bytes']}")
    assert "unknown or revoked" in out["refused_login"]
    assert out["refused_pause"].startswith("permission denied: only root"), out["refused_pause"]
    assert screenshot.stat().st_size > 10_000
    assert c.wait(flaky[-1], timeout=30)["state"] == "done"  # the one retried by its button
    assert {j["state"] for j in c.wait_many(flaky, timeout=60).values()} == {"done"}  # and the rest, in one request
    assert c.get(broken)["state"] == "dead"  # (not of the filtered task)
