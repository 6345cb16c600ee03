"""make bench-gateway: what tq-gateway costs and holds, with the shipped config (issue 27's figures).

    python bench/gateway.py [--jobs 60000] [--pairs 3] [--million]

- drain with and without observers (200 SSE clients following every event through one gateway and a GET /metrics
  every second), run for run, alternating which goes first;
- the gateway's CPU per event (while the observed drains run) and per scrape (scrapes alone, the host idle);
- /metrics through the gateway (keep-alive HTTP) beside `tqctl metrics` (a process each), p50 of each;
- with --million, the gateway's RSS before and after 1,000,000 jobs pass with the followers connected.

tq-host's instructions per drained job with the same observers: `bench/instructions.py --shape gateway`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench import WORKERS, _rss_mb, _run_s, drain, quiet, shipped_config, unit_environment  # noqa: E402
from harness import Gateway, Suite  # noqa: E402

FOLLOWERS = 200


def make_token(suite: Suite) -> str:
    """A token acting as root (the bench's user), made with tqctl as an operator would."""
    out = subprocess.run([str(REPO / ".venv/bin/tqctl"), "--config", str(suite.config), "token", "create",
                          f"bench-{time.monotonic_ns()}", "--user", "root"], env=suite.env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


class SseFollowers:
    """`n` Server-Sent Events streams of every event, read (and dropped) by one thread in this process: what
    they cost is the gateway's and tq-host's, not 200 interpreters'."""

    def __init__(self, gateway: Gateway, token: str, n: int) -> None:
        self.gateway, self.token, self.n = gateway, token, n
        self.socks: list[socket.socket] = []
        self.events = 0  # events received, summed over the streams
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> SseFollowers:
        request = (f"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                   f"Authorization: Bearer {self.token}\r\n\r\n").encode()
        for _ in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.gateway.port))
            s.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"bench: the gateway closed an event stream: {head[:200]!r}")
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                status = head.split(b"\r\n")[0]
                raise RuntimeError(f"bench: the event stream was refused: {status!r}")
            s.setblocking(False)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ)
        self.thread.start()
        return self

    def _read(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.2):
                try:
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                self.events += data.count(b"\ndata:") + data.startswith(b"data:")

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


class Scraper:
    """GET /metrics once a second (keep-alive), from the start of the one before, until stopped."""

    def __init__(self, gateway: Gateway, token: str) -> None:
        self.gateway, self.token = gateway, token
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=30)
        due = time.monotonic()
        while not self.stop.wait(max(due - time.monotonic(), 0.0)):
            due += 1.0
            scrape(conn, self.token)
            self.scrapes += 1
        conn.close()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def scrape(conn: http.client.HTTPConnection, token: str) -> bytes:
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"bench: GET /metrics answered {response.status}: {body[:200]!r}")
    return body


def metrics_p50(suite: Suite, gateway: Gateway, token: str, n: int) -> dict[str, float]:
    """Milliseconds per /metrics through the gateway (one keep-alive connection) and per `tqctl metrics`."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    through: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        scrape(conn, token)
        through.append(time.perf_counter() - t0)
    conn.close()
    tqctl: list[float] = []
    argv = [str(REPO / ".venv/bin/tqctl"), "--config", str(suite.config), "metrics"]
    for _ in range(max(n // 10, 5)):
        t0 = time.perf_counter()
        subprocess.run(argv, env=suite.env, check=True, stdout=subprocess.DEVNULL)
        tqctl.append(time.perf_counter() - t0)
    return {"gateway_ms": round(statistics.median(through) * 1e3, 2),
            "tqctl_metrics_ms": round(statistics.median(tqctl) * 1e3, 2)}


def scrape_cpu(gateway: Gateway, token: str, n: int) -> float:
    """The gateway's CPU milliseconds per scrape, scrapes alone (the host otherwise idle)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    scrape(conn, token)
    before = _run_s(gateway.daemon.pid)
    for _ in range(n):
        scrape(conn, token)
    conn.close()
    return (_run_s(gateway.daemon.pid) - before) / n * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=60000)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--followers", type=int, default=FOLLOWERS)
    p.add_argument("--million", action="store_true", help="also the gateway's RSS across 1,000,000 jobs")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-gw-"))
    suite = Suite(tmp)
    out: dict[str, Any] = {"jobs": args.jobs, "followers": args.followers}
    try:
        shipped_config(suite)
        host = suite.host(env=unit_environment(REPO / "units/tq-host.service"))
        for i in range(1, WORKERS + 1):
            suite.worker(str(i), env=unit_environment(REPO / "units/tq-worker@.service"))
        suite.wait_live(WORKERS, timeout=120)
        gateway = suite.gateway()
        token = make_token(suite)
        drain(suite, 2000, 4)  # warm-up
        quiet(suite)
        out["metrics_p50"] = metrics_p50(suite, gateway, token, 200)
        out["gateway_cpu_ms_per_scrape"] = round(scrape_cpu(gateway, token, 100), 3)
        plain, observed, cpu = [], [], []
        host_us: dict[str, list[float]] = {"plain": [], "observed": []}  # tq-host's CPU per drained job
        for i in range(args.pairs):
            for with_observers in ((False, True) if i % 2 == 0 else (True, False)):
                if not with_observers:
                    h0 = _run_s(host.pid)
                    plain.append(drain(suite, args.jobs, 4)["jobs_per_s"])
                    quiet(suite)
                    host_us["plain"].append(round((_run_s(host.pid) - h0) / args.jobs * 1e6, 2))
                    continue
                with SseFollowers(gateway, token, args.followers) as followers, Scraper(gateway, token):
                    before, h0 = _run_s(gateway.daemon.pid), _run_s(host.pid)
                    observed.append(drain(suite, args.jobs, 4)["jobs_per_s"])
                    quiet(suite)
                    used = _run_s(gateway.daemon.pid) - before
                    host_us["observed"].append(round((_run_s(host.pid) - h0) / args.jobs * 1e6, 2))
                cpu.append({"gateway_cpu_s": round(used, 3), "delivered": followers.events,
                            "host_events": max(followers.events // args.followers, 1)})
        out["host_cpu_us_per_job"] = host_us
        out["drain_jobs_per_s"] = {"plain": plain, "observed": observed,
                                   "ratios": [round(o / p, 3) for p, o in zip(plain, observed, strict=True)]}
        out["gateway_cpu_us_per_host_event"] = [round(c["gateway_cpu_s"] / c["host_events"] * 1e6, 2) for c in cpu]
        out["gateway_cpu_us_per_delivered_event"] = [round(c["gateway_cpu_s"] / max(c["delivered"], 1) * 1e6, 3)
                                                     for c in cpu]
        out["observed_runs"] = cpu
        if args.million:
            with SseFollowers(gateway, token, args.followers), Scraper(gateway, token):
                rss_before = _rss_mb(gateway.daemon.pid)
                for _ in range(10):
                    drain(suite, 100_000, 4)
                quiet(suite)
                out["gateway_rss_mb"] = {"before": rss_before, "after_1m_jobs": _rss_mb(gateway.daemon.pid)}
        print(json.dumps(out, indent=2))
        return 0
    finally:
        suite.close()


if __name__ == "__main__":
    raise SystemExit(main())
