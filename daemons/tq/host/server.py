"""The control socket: a Unix stream socket where tqctl and the client API reach tq-host.

It listens, accepts (taking each caller's uid from SO_PEERCRED), cuts what
arrives into lines, and writes replies with back-pressure: a reply waits in the
connection's buffer, and the selector watches for room only while one does. It
hands complete lines up and takes encoded replies down; it knows no jobs.

Its memory is bounded, so that no member of group tq can exhaust tq-host's: a
connection whose unsent replies pass REPLIES_HELD is not read from (its next
requests wait in the kernel, and the client's writes block) until it has taken
half of them; and the parts of request lines not yet ended, kept between reads,
may total REQUESTS_HELD across all connections: the read that would pass it is
refused (`unavailable`: try again) and its connection closed. A request that
comes whole in one read, and a reply the socket takes at once, leave both
buffers empty and cost nothing more.

Across connections, unsent replies may total REPLIES_TOTAL: past it the connection holding the most is closed,
with a journal line naming its uid and how much it held (see REPLIES_TOTAL for why closed rather than left
unread). And the connections are at most RLIMIT_NOFILE less RESERVED_FDS (kept for the store, the workers'
mailboxes, a job's pipes): one more is answered with one line (`unavailable`) and closed. Neither costs a request
anything: the total changes only where replies wait, and the count at accept and close.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import control
from ..daemon import StartError
from ..log import Burst
from ..ownership import restrict
from ..socketpath import socket_there

SOCKET_MODE = 0o660  # root and group tq
# Unsent replies a connection may have before it is read from no more (until half of them are taken): a client
# that sends requests and never reads their replies is held to this, plus the replies to one read (64 KiB).
REPLIES_HELD = 1 << 20
# Unfinished request lines held across all connections. Two of the largest request (control.MAX_LINE: a
# `submit --batch` chunk of 5,000 jobs of 8 KiB messages is 40 MB) fit, and not the hundreds that once took
# tq-host's memory. The connection whose read would pass it is refused rather than left unread: connections
# left unread while holding the budget would wait for each other's lines forever, where a refusal is an
# answer that a client can act on (it is `unavailable`, exit 3: the same request may succeed later).
REQUESTS_HELD = 128 * 1024 * 1024
BEHIND_READ = 1024  # bytes read at a time from a connection that is behind with its replies (a few requests)
BEHIND = 1 << 16  # unsent reply bytes past which a connection is behind (a burst's replies stay under it)
# Unsent replies across all connections: past it the connection that holds the most is closed. Twice a `list` of
# 100,000 jobs fits. Closed rather than left unread: not reading from it frees nothing (what it holds stays until
# its client reads, maybe never), and a few hundred such at REPLIES_HELD each would keep the total over for good;
# the one holding the most is the likeliest not to read at all, and its memory comes back at once.
REPLIES_TOTAL = 128 * 1024 * 1024
RESERVED_FDS = 256  # descriptors not given to connections: the store, the workers' mailboxes, the listener


@dataclass
class Conn:
    """One client connection."""

    sock: socket.socket
    uid: int
    gid: int = -1
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    closed: bool = False
    writing: bool = False  # the selector watches it for EVENT_WRITE
    reading: bool = True  # ... and for EVENT_READ: not while more than REPLIES_HELD waits to be sent
    behind: bool = False  # more than BEHIND of its replies waits: it is read BEHIND_READ bytes at a time
    held: int = 0  # the bytes of rbuf counted in Server.held (an unfinished request line)
    unsent: int = 0  # the bytes of wbuf counted in Server.unsent (replies waiting for room), as of _watch
    subscribed: bool = False  # it follows the event stream (stream.py): its closing is told to on_close
    token: str | None = None  # the API token it acts with (act_as, host/tokens.py): uid and gid are its user's
    read_only: bool = False  # that token may only read
    account_at: float = 0.0  # when its token's user was last looked up (time.monotonic)


OnLine = Callable[[Conn, bytes], None]


class Server:
    def __init__(self, sel: selectors.BaseSelector, on_line: OnLine, on_close: Callable[[Conn], None],
                 refused: Burst) -> None:
        self.sel, self.on_line, self.refused = sel, on_line, refused
        self.on_close = on_close  # a subscribed connection closed (the event stream forgets it)
        self.listener: socket.socket | None = None
        self.path = ""
        self._reserve_fd = os.open("/dev/null", os.O_RDONLY)  # spare descriptor to refuse clients when out
        self._chunk = bytearray(1 << 16)  # every connection reads into this, then appends what came
        self._sip = bytearray(BEHIND_READ)  # ... or into this while it is behind with reading its replies
        self.held = 0  # bytes of unfinished request lines across the connections (REQUESTS_HELD)
        self.unsent = 0  # bytes of replies waiting for room across the connections (REPLIES_TOTAL)
        self.behind: dict[int, Conn] = {}  # the connections with replies waiting, by id(): the one to close is here
        self.connections = 0  # open connections; at most max_connections
        self.max_connections = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_FDS)

    def listen(self, path: str) -> None:
        """Bind `path` (mode 0660, group tq); a stale socket file is replaced, a live one is refused, and anything
        else at that path (a file, a directory, a symlink) is refused and left as it is."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            stale = socket_there(path)
        except ValueError as e:
            raise StartError(f"host.socket: {e}") from None
        if stale:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise StartError(f"socket {path} is in use by another tq-host")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        restrict(path, SOCKET_MODE)
        sock.listen(128)
        sock.setblocking(False)
        self.listener, self.path = sock, path
        self.sel.register(sock, selectors.EVENT_READ, self._on_accept)

    def close(self) -> None:
        if self.listener is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.listener.close()
        self.listener = None

    def adopt(self, sock: socket.socket, uid: int, gid: int = -1) -> Conn:
        """Serve a connected socket whose peer has this uid and gid."""
        sock.setblocking(False)
        conn = Conn(sock, uid, gid)
        self.connections += 1
        chunk = self._chunk
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._on_conn(conn, mask, chunk))
        return conn

    def send(self, conn: Conn, data: bytes) -> None:
        """Queue a reply (already framed) and write what the socket takes now."""
        if not conn.closed:
            conn.wbuf += data
            self._write(conn)

    def _on_accept(self, _mask: int) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: refuse clearly, or the listener stays readable and spins
                self._refuse_connection(e)
                return
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, gid = struct.unpack("3i", creds)
            if self.connections >= self.max_connections:
                self._turn_away(sock, uid)
                continue
            self.adopt(sock, uid, gid)

    def _turn_away(self, sock: socket.socket, uid: int) -> None:
        """One connection more than max_connections: answer with the reason and close."""
        self.refused(f"refused a connection of uid {uid}: {self.connections} are open, the limit (RLIMIT_NOFILE "
                     f"less {RESERVED_FDS})")
        reply = {"ok": False, "code": "unavailable", "error": f"tq-host serves {self.connections} connections, "
                                                              f"its limit: try again later"}
        _answer_and_close(sock, reply)

    def _refuse_connection(self, error: OSError) -> None:
        """Out of descriptors: free the reserve one, accept, answer with the reason, close, re-reserve."""
        assert self.listener is not None
        self.refused(f"cannot accept a connection: {error}")
        os.close(self._reserve_fd)
        try:
            sock, _ = self.listener.accept()
            _answer_and_close(sock, {"ok": False, "code": "unavailable",
                                     "error": f"tq-host is out of resources: {error}"})
        except OSError:
            pass
        finally:
            self._reserve_fd = os.open("/dev/null", os.O_RDONLY)

    def _on_conn(self, conn: Conn, mask: int, chunk: bytearray) -> None:
        """Write what waits, then read into `chunk` (the small one while replies wait to be read) and take the
        requests whose lines it ends."""
        if mask & selectors.EVENT_WRITE:
            self._write(conn)
        if not mask & selectors.EVENT_READ or conn.closed:
            return
        try:
            n = conn.sock.recv_into(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._close(conn)
            return
        searched = len(conn.rbuf)  # a long request comes in many chunks: look for its end in the new one only
        conn.rbuf += memoryview(chunk)[:n]
        while (end := conn.rbuf.find(b"\n", searched)) >= 0:
            line = bytes(conn.rbuf[:end])
            del conn.rbuf[:end + 1]
            searched = 0
            self.on_line(conn, line)
        if conn.rbuf or conn.held:  # a line not ended (or one that was, and now is): its bytes are counted
            self._hold(conn)

    def _hold(self, conn: Conn) -> None:
        """Count what the connection keeps of an unfinished line; refuse it past control.MAX_LINE, or when it would
        take the connections' total past REQUESTS_HELD."""
        if conn.closed:  # (by a request of that read: _close took its count back)
            return
        grew = len(conn.rbuf) - conn.held
        self.held += grew
        conn.held += grew
        if conn.held > control.MAX_LINE:
            self._refuse(conn, "bad_request", "request too long")
        elif grew > 0 and self.held > REQUESTS_HELD:
            self.refused(f"refused a request: the unfinished request lines of the connections would hold more "
                         f"than {REQUESTS_HELD >> 20} MiB")
            self._refuse(conn, "unavailable", f"tq-host holds {REQUESTS_HELD >> 20} MiB of unfinished requests, "
                                              f"its limit: this one is refused; send it again later")

    def _refuse(self, conn: Conn, code: str, error: str) -> None:
        """Answer with an error and close: what the connection sent is not taken."""
        self.send(conn, control.encode_out({"ok": False, "code": code, "error": error}))
        self._close(conn)

    def _write(self, conn: Conn) -> None:
        if conn.closed:
            return
        try:
            sent = conn.sock.send(conn.wbuf)
            del conn.wbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.wbuf or conn.writing:  # a reply waits for room (or no more): what the selector watches may change
            self._watch(conn)

    def _watch(self, conn: Conn) -> None:
        """Watch for room while a reply waits; for requests unless more than REPLIES_HELD waits (again once half of
        it is sent). While more than BEHIND waits, reads are of BEHIND_READ bytes: a client that does not read its
        replies adds those of a few requests at a time, not of 64 KiB of them. (A client that is merely a little
        behind, as pipelining clients are in a drain, keeps the full reads: 1 KiB reads whenever any reply waited
        cost the 4-client drain 7 % of its throughput.)"""
        waiting = len(conn.wbuf)
        if waiting != conn.unsent:
            self._count_unsent(conn, waiting)
            if conn.closed:
                return
        writing = waiting > 0
        reading = waiting <= (REPLIES_HELD if conn.reading else REPLIES_HELD // 2)
        behind = waiting > BEHIND
        if writing != conn.writing or reading != conn.reading or behind != conn.behind:
            conn.writing, conn.reading, conn.behind = writing, reading, behind
            events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if writing else 0)
            chunk = self._sip if behind else self._chunk
            self.sel.modify(conn.sock, events, lambda mask: self._on_conn(conn, mask, chunk))

    def _count_unsent(self, conn: Conn, waiting: int) -> None:
        """Count the connection's unsent replies in the total; past REPLIES_TOTAL, close those that hold the most."""
        self.unsent += waiting - conn.unsent
        conn.unsent = waiting
        if waiting:
            self.behind[id(conn)] = conn
        else:
            self.behind.pop(id(conn), None)
        while self.unsent > REPLIES_TOTAL and self.behind:
            most = max(self.behind.values(), key=lambda c: c.unsent)
            self.refused(f"closed a connection of uid {most.uid} holding {most.unsent >> 10} KiB of replies it "
                         f"does not read: the connections' unsent replies passed {REPLIES_TOTAL >> 20} MiB")
            self._close(most)

    def close_conn(self, conn: Conn) -> None:
        """Close a connection (its socket failed elsewhere: the event stream's sends)."""
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.held -= conn.held
        conn.held = 0
        self.connections -= 1
        if conn.unsent:
            self.unsent -= conn.unsent
            conn.unsent = 0
            del self.behind[id(conn)]
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if conn.subscribed:
            self.on_close(conn)


def _answer_and_close(sock: socket.socket, reply: dict[str, object]) -> None:
    """A connection turned away: its one reply, if the socket takes it at once, then closed."""
    sock.setblocking(False)
    try:
        sock.send(control.encode_out(reply))
    except OSError:
        pass
    sock.close()
