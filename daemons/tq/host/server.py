"""The control socket: a Unix stream socket where tqctl and the client API reach tq-host.

It listens, accepts (taking each caller's uid from SO_PEERCRED), cuts what
arrives into lines, and writes replies with back-pressure: a reply waits in the
connection's buffer, and the selector watches for room only while one does. It
hands complete lines up and takes encoded replies down; it knows no jobs.
"""

from __future__ import annotations

import os
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
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._on_conn(conn, mask))
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
            self.adopt(sock, uid, gid)

    def _refuse_connection(self, error: OSError) -> None:
        """Out of descriptors: free the reserve one, accept, answer with the reason, close, re-reserve."""
        assert self.listener is not None
        self.refused(f"cannot accept a connection: {error}")
        os.close(self._reserve_fd)
        try:
            sock, _ = self.listener.accept()
            reply = {"ok": False, "code": "unavailable", "error": f"tq-host is out of resources: {error}"}
            sock.setblocking(False)
            try:
                sock.send(control.encode_out(reply))
            except OSError:
                pass
            sock.close()
        except OSError:
            pass
        finally:
            self._reserve_fd = os.open("/dev/null", os.O_RDONLY)

    def _on_conn(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write(conn)
        if not mask & selectors.EVENT_READ or conn.closed:
            return
        try:
            n = conn.sock.recv_into(self._chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._close(conn)
            return
        searched = len(conn.rbuf)  # a long request comes in many chunks: look for its end in the new one only
        conn.rbuf += memoryview(self._chunk)[:n]
        while (end := conn.rbuf.find(b"\n", searched)) >= 0:
            line = bytes(conn.rbuf[:end])
            del conn.rbuf[:end + 1]
            searched = 0
            self.on_line(conn, line)
        if len(conn.rbuf) > control.MAX_LINE:
            self.send(conn, control.encode_out({"ok": False, "code": "bad_request", "error": "request too long"}))
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
        if bool(conn.wbuf) != conn.writing:  # watch for room only while a reply waits for it
            conn.writing = bool(conn.wbuf)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.sel.modify(conn.sock, events, self.sel.get_key(conn.sock).data)

    def close_conn(self, conn: Conn) -> None:
        """Close a connection (its socket failed elsewhere: the event stream's sends)."""
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if conn.subscribed:
            self.on_close(conn)
