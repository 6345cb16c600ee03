"""The control socket's memory: no member of group tq can exhaust tq-host's (the tester's §4). A client that sends
requests and never reads the replies is not read from past a bound; connections that send huge unfinished
lines are refused past a total. Meanwhile a normal client on another connection is served."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
from pathlib import Path

from harness import Daemon, Suite, wait_until

MB = 1 << 20


def status_kb(pid: int, field: str) -> int:
    """A figure of /proc/PID/status in kB (VmRSS: now; VmHWM: the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def send_until_held(path: Path, request: bytes, count: int, stalled: float = 3.0) -> int:
    """Send `count` copies of a request on one connection and read nothing; stop when the host takes no more for
    `stalled` seconds (its replies are not read, so it stops reading). How many were sent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.setblocking(False)
    data = memoryview(request * count)
    sent = 0
    try:
        while sent < len(data):
            _, writable, _ = select.select([], [sock], [], stalled)
            if not writable:
                break  # held: the host reads nothing more from this connection
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                continue
        return sent // len(request)
    finally:
        sock.close()


def test_a_client_that_never_reads_its_replies_is_not_read_from_past_a_bound(suite: Suite) -> None:
    host = suite.host()
    c = suite.client()
    c.submit_many([("task-1", [str(i)]) for i in range(40)])  # events: each reply below is some kilobytes
    request = b'{"op":"events","limit":1000}\n'
    reply_size = len(json.dumps(c.call("events", limit=1000)))
    assert reply_size > 4000
    before = status_kb(host.pid, "VmRSS")
    done = {}
    sender = threading.Thread(target=lambda: done.update(sent=send_until_held(suite.dir / "tq.sock", request,
                                                                               50_000)))
    sender.start()
    sender.join(120)
    assert c.status()["version"]  # another connection is served all along
    grown = (status_kb(host.pid, "VmHWM") - before) // 1024
    assert done["sent"] < 50_000, "the host read every request: its unsent replies have no bound"
    assert grown < 60, f"tq-host grew {grown} MB"
    assert host.proc.poll() is None


def test_connections_sending_huge_unfinished_lines_are_refused_past_a_total(suite: Suite) -> None:
    host = suite.host()
    c = suite.client()
    before = status_kb(host.pid, "VmRSS")
    chunk = b"x" * MB
    outcomes: list[str] = []

    def huge(megabytes: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(suite.dir / "tq.sock"))
        try:
            for _ in range(megabytes):
                sock.sendall(chunk)
            outcomes.append("held")
        except OSError as e:  # refused: the host answered and closed
            assert e.errno in (errno.EPIPE, errno.ECONNRESET), e
            sock.settimeout(5)
            outcomes.append(sock.recv(4096).decode(errors="replace"))
        finally:
            holders.append(sock)

    holders: list[socket.socket] = []
    threads = [threading.Thread(target=huge, args=(60,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert len(outcomes) == 10
        refused = [o for o in outcomes if o != "held"]
        assert refused and all('"code":"unavailable"' in o and "unfinished requests" in o for o in refused), outcomes
        assert c.status()["version"]  # served while the others hold their lines
        assert c.submit("task-1", "small") > 0
        grown = (status_kb(host.pid, "VmHWM") - before) // 1024
        assert grown < 250, f"tq-host grew {grown} MB"
    finally:
        for sock in holders:
            sock.close()
    assert host.proc.poll() is None


def hold_replies(path: Path, request: bytes, count: int) -> socket.socket:
    """A connection that sends `count` requests and reads none of their replies. It returns once replies come, so
    that each step of the host takes one such connection's requests (what one step answers is held whole until its
    commit: the bound here is on replies waiting for their client)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(request * count)
    select.select([sock], [], [], 30)  # the replies began to come: the host took the requests in its last step
    return sock


def test_unsent_replies_across_connections_are_bounded(suite: Suite) -> None:
    """Many connections that each stay under REPLIES_HELD but never read: past the total, the one that holds the
    most is closed, and the journal says so. Others are served meanwhile."""
    host = suite.host()
    c = suite.client()
    c.submit_many([("task-1", ["x" * 200]) for _ in range(1000)])
    request = b'{"op":"list","limit":1000}\n'
    reply_size = len(json.dumps(c.call("list", limit=1000)))
    assert reply_size > 300_000
    before = status_kb(host.pid, "VmRSS")
    held = [hold_replies(suite.dir / "tq.sock", request, 4) for _ in range(160)]  # ~1.3 MB each, 200 MB in all
    try:
        wait_until(lambda: f"closed a connection of uid {os.geteuid()} holding" in host.text(), timeout=120,
                   what="tq-host to close a connection that does not read its replies")
        assert "unsent replies passed 128 MiB" in host.text()
        assert c.status()["version"]
        grown = (status_kb(host.pid, "VmHWM") - before) // 1024
        assert grown < 200, f"tq-host grew {grown} MB"
    finally:
        for sock in held:
            sock.close()
    assert c.submit("task-1", "small") > 0
    assert host.proc.poll() is None


def test_connections_past_the_limit_are_refused_in_one_line(suite: Suite) -> None:
    """tq-host started with 300 descriptors: it serves 300 - 256 = 44 connections; the next is answered (one line,
    unavailable) and closed; once one closes, a new one is served."""
    host = Daemon("host", ["prlimit", "--nofile=300", "--", *suite._python("tq.host")], suite.env, suite.dir)
    suite.daemons.append(host)
    host.ready()
    c = suite.client()
    assert c.status()["version"]  # (connected: one of the 44)
    held = []
    try:
        for _ in range(43):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(suite.dir / "tq.sock"))
            held.append(sock)
        r = suite.tqctl("status")
        assert r.returncode == 3, r
        assert r.stderr.count("\n") == 1 and "tq-host serves 44 connections, its limit: try again later" in r.stderr
        assert f"refused a connection of uid {os.geteuid()}: 44 are open" in host.text()
        assert c.status()["version"]  # those it has are served
        held.pop().close()
        wait_until(lambda: suite.tqctl("status").returncode == 0, what="a connection to be served again")
    finally:
        for sock in held:
            sock.close()
    assert host.proc.poll() is None
