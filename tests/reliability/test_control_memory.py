"""The control socket's memory: no member of group tq can exhaust tq-host's (the tester's §4). A client that sends
requests and never reads the replies is not read from past a bound; connections that send huge unfinished
lines are refused past a total. Meanwhile a normal client on another connection is served."""

from __future__ import annotations

import errno
import json
import select
import socket
import threading
from pathlib import Path

from harness import Suite

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
