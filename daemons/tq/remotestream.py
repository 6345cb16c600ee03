"""A subscription through tq-gateway: the Server-Sent Events of GET /api/v1/events, read from an http.client
answer and given as tq-host's subscription gives them (connection.Connection._stream): chunks of whole JSON lines,
each event's data a line, `{"missed": N}` as the gateway tells it (`event: missed`).

`events()` returns only once nothing more is buffered (in http.client's reader or TLS), so that a selector on
the socket (tqctl watch) sees the next event arrive.
"""

from __future__ import annotations

import http.client
import json

from .clienterrors import HostUnreachable, TqError, refusal

STREAM_SILENCE = 60.0  # the gateway writes a comment to a quiet stream every 15 s: this long silent is lost


class EventFeed:
    """A subscription's Server-Sent Events, read from an HTTP response and given as chunks of JSON lines."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self.conn, self.resp, self.url = conn, resp, url
        if conn.sock is not None:
            conn.sock.settimeout(STREAM_SILENCE)
        self._partial = b""  # the start of a line not yet ended
        self._data: list[bytes] = []  # the data lines of the event being read
        self._kind = b""  # its `event:` name
        self._error: TqError | None = None  # the stream ended after events not yet given: raised next

    def events(self) -> bytes:
        """The next events, at least one: each its data, a line; `{"missed": N}` as the gateway tells it.

        Returns once nothing more is buffered, so that a selector on the socket sees the next event arrive.
        """
        out: list[bytes] = []
        while self._error is None and (not out or self._buffered()):
            try:
                data = self.resp.read1(1 << 16)
            except TimeoutError:
                self._error = self._lost(f"nothing came for {STREAM_SILENCE:g}s")
            except (OSError, http.client.HTTPException) as e:
                self._error = self._lost(reason(e))
            else:
                if not data:
                    self._error = self._lost("it ended the stream")
                out += self._parse(data)
        if not out and self._error is not None:
            raise self._error
        return b"".join(out)

    def _buffered(self) -> bool:
        """More of the stream is buffered or on the socket already: a read would not wait (for long).

        What http.client's reader holds is looked at without waiting (the socket non-blocking for the peek). The
        end of a chunk (CR LF) alone does not count: it is framing, and the next chunk may be long in coming.
        """
        sock, fp = self.conn.sock, self.resp.fp
        if sock is None or fp is None:
            return False
        sock.settimeout(0.0)
        try:
            return bool(fp.peek(1).strip(b"\r\n"))
        except OSError:  # (TLS: nothing decrypted yet)
            return False
        finally:
            sock.settimeout(STREAM_SILENCE)

    def _parse(self, data: bytes) -> list[bytes]:
        """The events that `data` completes (text/event-stream: `data:` lines, an empty line ends an event)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out = []
        for raw in lines:
            line = raw.removesuffix(b"\r")
            if not line:
                if self._kind == b"end":  # the gateway ended the stream, saying why (a token revoked)
                    self._error = self._error or _ended(b"\n".join(self._data))
                elif self._data:
                    out.append(b"\n".join(self._data) + b"\n")
                self._data, self._kind = [], b""
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value.removeprefix(b" "))
            elif name == b"event":
                self._kind = value.strip()
            # (comments keep the stream open; `event: missed` says what its data says; `id:` is the data's ts)
        return out

    def _lost(self, why: str) -> HostUnreachable:
        return HostUnreachable(f"lost tq-gateway at {self.url}: {why}")

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


def _ended(data: bytes) -> TqError:
    """The error an `event: end` tells (`{"error": {"code", "message"}}`): Unauthorized for a revoked token."""
    try:
        error = json.loads(data)["error"]
        return refusal(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return HostUnreachable(f"tq-gateway ended the stream: {data[:200].decode(errors='replace')}")


# OpenSSL's verify codes (X509_V_ERR_*) for a certificate whose authority is not known, and for one that does
# not name the host the URL names (a hostname, an e-mail address, an IP address)
_UNKNOWN_AUTHORITY = frozenset((2, 18, 19, 20, 21))
_NAME_MISMATCH = frozenset((62, 63, 64))


def reason(e: BaseException, host: str | None = None) -> str:
    """Why a connection failed, in a few words. A TLS certificate that was not accepted says what to do: from an
    authority this client does not know, give its CA; one that does not name `host`, the URL's, use a name it
    names (the --ca-file hint would be wrong there: the CA may well have been given)."""
    verify = getattr(e, "verify_message", None)
    if verify:
        code = getattr(e, "verify_code", None)
        if code in _NAME_MISMATCH and host:
            return (f"its certificate does not name {host} ({verify.rstrip('.')}): use in the URL a name or address "
                    f"the certificate names, or give tq-gateway a certificate that names {host}")
        if code in _UNKNOWN_AUTHORITY:
            return f"its certificate is not trusted: {verify} (give the CA's certificate: tqctl --ca-file FILE)"
        return f"its certificate is not trusted: {verify}"
    strerror = getattr(e, "strerror", None)
    return str(strerror or e or type(e).__name__)
