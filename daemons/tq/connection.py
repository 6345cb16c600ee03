"""A connection to tq-host: over its Unix socket, or through tq-gateway (remote.HttpConnection) when given a URL.
One request and its reply at a time, or the events of a subscription; the Client's operations are made of these
calls (client.py)."""

from __future__ import annotations

import grp
import os
import socket
import stat
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

from . import configfiles, control
from .clienterrors import HostUnreachable, PermissionDenied, Refused, refusal
from .ownership import GROUP, group_name, user_name

if TYPE_CHECKING:
    from .remote import HttpConnection


class Connection:
    """A connection to tq-host over its Unix socket (opened on first use, reopened after a failure): one request
    and its reply at a time (`call`), or the events of a subscription (`_stream`).

    With `url` (and `token`), tq-host through tq-gateway instead: each call is the matching /api/v1 request
    (remote.py's `HttpConnection`; `ca_file`: the CAs an https gateway's certificate is checked against, by
    default the system's). The local path pays one attribute test per call for it.
    """

    def __init__(self, config: str | None = None, socket_path: str | None = None, timeout: float | None = 60.0,
                 url: str | None = None, token: str | None = None, ca_file: str | None = None) -> None:
        self.remote = None if url is None else _remote(url, token, timeout, ca_file)
        where = url or socket_path  # (a remote connection's messages name its URL)
        setting = configfiles.SocketSetting(where, "") if where else _config_socket(config)
        self.socket_path = setting.path
        self.socket_source = setting.source  # where the path came from, for the message when it cannot connect
        self.config_skipped = setting.skipped  # files of the configuration that do not parse (left out)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._chunk = bytearray(1 << 16)  # recv_into this: a fresh large bytes per recv costs mmap and munmap
        self._sock_timeout: float | None = None
        self._rid = 0

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The connection's descriptor (to wait for a subscription's events in a selector), -1 if none."""
        if self.remote is not None:
            return self.remote.fileno()
        return -1 if self._sock is None else self._sock.fileno()

    def another(self) -> Self:
        """A second connection to the same place, as the same caller (a subscription takes one for itself)."""
        if self.remote is not None:
            return type(self)(timeout=self.timeout, **self.remote.where())
        return type(self)(socket_path=self.socket_path, timeout=self.timeout)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except PermissionError:
                sock.close()
                raise PermissionDenied(denied(self.socket_path)) from None
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                source = f" ({self.socket_source})" if self.socket_source else ""
                other = "; another tq's: set TQ_CONFIG or --config to its file" if _default(self.socket_source) else ""
                raise HostUnreachable(f"tq-host is not reachable at {self.socket_path}{source}: {e.strerror} "
                                      f"(is it running? systemctl status tq-host{other})") from None
            self._sock, self._sock_timeout = sock, None
        return self._sock

    def _set_timeout(self, sock: socket.socket, seconds: float | None) -> None:
        """The kernel's send and receive timeouts (SO_SNDTIMEO, SO_RCVTIMEO), set only when they change.

        The socket stays in blocking mode: a Python-level timeout would cost a poll() before every send and
        recv, and settimeout() an ioctl per call.
        """
        if seconds == self._sock_timeout:
            return
        usec = 0 if seconds is None else max(1, round(min(seconds, 1e9) * 1e6))  # 0 would mean no timeout
        timeval = struct.pack("ll", *divmod(usec, 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self._sock_timeout = seconds

    def call(self, op: str, wait: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply's body; raise a TqError for a refusal.

        `wait`: seconds the host may take on top of the client's timeout (it answers when a job finishes).
        """
        if self.remote is not None:
            return self.remote.call(op, wait, **fields)
        try:
            request = control.encode({"op": op, "rid": self._rid + 1, **fields})
        except UnicodeEncodeError as e:  # a lone surrogate: bytes that were not UTF-8, decoded with surrogateescape
            raise Refused(f"a request's text must be UTF-8: {e.object[e.start:e.end]!r} is not (bytes that were "
                          "not UTF-8 text in a name, argument or payload)") from None
        self._connect()
        self._rid += 1
        return self._exchange(request, wait)

    def _exchange(self, request: bytes | None, wait: float | None) -> dict[str, Any]:
        """Send `request` (None: nothing, a further reply is due) and read one reply line."""
        sock = self._sock
        if sock is None:
            raise HostUnreachable(f"lost tq-host at {self.socket_path}: not connected")
        try:
            self._set_timeout(sock, None if self.timeout is None else self.timeout + (wait or 0.0))
            try:
                if request is not None:
                    sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the host may have answered and closed (it refuses when out of resources): read on
            searched = 0
            while (end := self._buf.find(b"\n", searched)) < 0:
                searched = len(self._buf)
                n = sock.recv_into(self._chunk)
                if not n:
                    raise ConnectionResetError("tq-host closed the connection")
                self._buf += memoryview(self._chunk)[:n]
            reply = control.decode(bytes(self._buf[:end]))
        except BlockingIOError:  # the kernel's timeout (SO_RCVTIMEO or SO_SNDTIMEO) ran out
            self.close()
            raise HostUnreachable(f"tq-host at {self.socket_path} did not answer within the client's "
                                  f"timeout ({self.timeout}s)") from None
        except (OSError, control.RequestError) as e:
            self.close()  # a later call reconnects
            raise HostUnreachable(f"lost tq-host at {self.socket_path}: {e}") from None
        del self._buf[:end + 1]
        if not reply.get("ok"):
            code = str(reply.get("code", "bad_request"))
            raise refusal(code, str(reply.get("error", code)))
        return reply

    def _more(self, wait: float | None) -> dict[str, Any]:
        """The next reply to the last request (a submit with `wait_for` is answered twice)."""
        if self.remote is not None:
            return self.remote.more(wait)
        return self._exchange(None, wait)

    def _stream(self, recent: list[dict[str, Any]]) -> Iterator[bytes]:
        if self.remote is not None:
            yield from self.remote.stream(recent)
            return
        if recent:
            yield b"".join(control.encode(e) for e in recent)
        sock = self._sock
        assert sock is not None
        self._set_timeout(sock, None)
        while True:
            end = self._buf.rfind(b"\n")
            if end >= 0:
                chunk = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                yield chunk
            try:
                n = sock.recv_into(self._chunk)
            except OSError as e:
                n, error = 0, str(e)
            else:
                error = "it closed the connection"
            if not n:
                self.close()
                raise HostUnreachable(f"lost tq-host at {self.socket_path}: {error}")
            self._buf += memoryview(self._chunk)[:n]


def denied(path: str) -> str:
    """Why connect() on `path` said EACCES, from the owner and group of the socket (or, where it cannot be seen,
    of its directory): joining group tq is suggested only where that is the group."""
    join = f"permission denied on {path}: add yourself to group {GROUP} (sudo adduser $USER {GROUP}, then log in again)"
    for target in (path, os.path.dirname(path) or "."):
        try:
            st = os.stat(target)
        except OSError:
            continue
        if group_name(st.st_gid) == f"group {GROUP}":
            return join
        what = "it" if target == path else f"its directory {target}"
        return (f"permission denied on {path}: {what} belongs to {user_name(st.st_uid)} and {group_name(st.st_gid)} "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): run tqctl as that user or a member of that group")
    return join if _group_exists() else f"permission denied on {path}: a directory on its path is closed to this user"


def _group_exists() -> bool:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        return False
    return True


def _default(source: str) -> bool:
    """The socket path is the default one (no host.socket in the configuration read)."""
    return source.startswith("the default")


def _remote(url: str, token: str | None, timeout: float | None, ca_file: str | None) -> HttpConnection:
    from .remote import HttpConnection  # (http.client and ssl: only a client of tq-gateway loads them)

    return HttpConnection(url, token, timeout, ca_file)


def _config_socket(path: str | None) -> configfiles.SocketSetting:
    try:
        return configfiles.socket_setting(path)
    except configfiles.ConfigError as e:
        raise Refused(str(e)) from None
