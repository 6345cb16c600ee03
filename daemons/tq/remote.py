"""The client's connection to tq-host through tq-gateway: connection.Connection's calls made as the gateway's /api/v1
requests (docs/gateway.md), with the same replies and the same exceptions.

`Client(url=..., token=...)` (and `tqctl --url URL --token-file FILE`) uses it. One kept-alive HTTP connection
(http.client; ssl for https, checked against the system's CAs or `ca_file`) carries the requests; each op is one
route of routes.ROUTES, its fields in the path, the query (GET, DELETE) or a JSON body (POST). An error answer's
`{"error": {"code", "message"}}` raises the exception of tq's code, as tq-host's refusal would; a gateway that
cannot be reached raises HostUnreachable naming the URL.

Four calls are more than one request: a wait is held by the gateway for at most its `max_wait`, so a longer one is
made of requests of at most WAIT_CHUNK seconds (or the gateway's max_wait, once it refused more) until the
caller's timeout; a submit that waits longer than that is a submit, then such a wait; `subscribe` follows the
Server-Sent Events of /api/v1/events on a connection of its own, turned back into the chunks of JSON lines
tq-host's subscription gives, and its descriptor is the one `fileno()` gives a selector (remotestream.py);
`metrics` as text is the gateway's /metrics.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import select
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import SplitResult, quote, urlencode, urlsplit

from . import control
from .clienterrors import HostUnreachable, JobTimeout, NotFound, PermissionDenied, Refused, TqError, refusal
from .remotestream import STREAM_SILENCE, EventFeed, reason
from .routes import API, HOST_UNREACHABLE, OLD_HOST_UNREACHABLE, ROUTES

if TYPE_CHECKING:
    import ssl

WAIT_CHUNK = 30.0  # seconds one request may wait (the gateway's max_wait is 300 by default; proxies cut at 60)

_NAMED = {"instance": "worker", "name": "token", "id": "job"}  # what a path field names
_RETRIED = frozenset(("GET",))  # requests made again, once, when a kept-alive connection turns out closed


class Answer(NamedTuple):
    status: int
    content_type: str
    body: bytes
    target: str  # what was asked (the path and query)


class HttpConnection:
    """connection.Connection's calls (`call`, `more`, `stream`, `fileno`, `close`) through tq-gateway at `url`."""

    def __init__(self, url: str, token: str | None, timeout: float | None = 60.0, ca_file: str | None = None) -> None:
        parts = _checked_url(url)
        self.url, self.token, self.timeout, self.ca_file = url, token, timeout, ca_file
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.prefix = parts.path.rstrip("/") + API
        self.headers = {"Accept": "application/json", "User-Agent": "tq-client"}
        if token is not None:
            if not token or not token.isascii() or not token.isprintable() or " " in token:
                raise Refused("the token must be one word of printable ASCII (what tqctl token create printed)")
            self.headers["Authorization"] = f"Bearer {token}"
        self._http: http.client.HTTPConnection | None = None
        self._used = False  # the connection has carried a request (the server may have closed it since)
        self._context: ssl.SSLContext | None = None
        self._then: Callable[[], dict[str, Any]] | None = None  # the reply `more` gives (a submit that waits)
        self._feed: EventFeed | None = None
        self._max_wait = math.inf  # the gateway's [gateway] max_wait, once a wait past it was refused

    def where(self) -> dict[str, Any]:
        """What a second connection to the same gateway, as the same caller, is made with."""
        return {"url": self.url, "token": self.token, "ca_file": self.ca_file}

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        self._then = None

    def fileno(self) -> int:
        """The subscription's descriptor (a selector waits on it for events), else the requests' (-1: none)."""
        http_conn = self._feed.conn if self._feed is not None else self._http
        sock = None if http_conn is None else http_conn.sock
        return -1 if sock is None else int(sock.fileno())

    # ---- calls ------------------------------------------------------------------

    def call(self, op: str, wait: float | None = None, **fields: Any) -> dict[str, Any]:
        """One op's reply, as tq-host's (without `ok` and `rid`); a refusal raises its TqError."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if op == "wait":
            return self._wait(fields)
        if op == "subscribe":
            return self._subscribe(fields)
        if op == "submit" and "wait_for" in fields:
            return self._submit_and_wait(fields, float(fields.pop("wait_for")))
        if op == "metrics" and fields.pop("format", None) == "text":
            answer = self._checked(self._request("GET", "/metrics", {}, None, 0.0, absolute=True))
            return {"text": answer.body.decode("utf-8", "replace")}
        routes = ROUTES.get(op)
        if routes is None:
            raise Refused(f"{op!r} is not an operation tq-gateway carries (a remote client acts as its token's user)")
        route = next((r for r in routes if all(k in fields for k in r.names())), None)
        if route is None:
            raise Refused(f"{op} needs {', '.join(routes[-1].names())}")
        for name in route.names():
            if str(fields[name]) == "":  # (an empty path segment is another path: answered as tq-host answers it)
                raise Refused("invalid queue name ''") if name == "queue" else NotFound(f"no {_NAMED[name]} ''")
        path = route.path.format(**{k: quote(str(fields.pop(k)), safe="") for k in route.names()})
        query, body = (fields, None) if route.method != "POST" else ({}, fields)
        return self._json(self._request(route.method, path, query, body, wait or 0.0))

    def more(self, wait: float | None) -> dict[str, Any]:
        """The second reply of a submit that waits: the job once it has ended."""
        then, self._then = self._then, None
        if then is None:
            raise HostUnreachable(f"lost tq-gateway at {self.url}: no reply is due")
        return then()

    def _submit_and_wait(self, fields: dict[str, Any], limit: float) -> dict[str, Any]:
        """Within WAIT_CHUNK: one request (?wait=), whose job `more` gives. Longer: the submit, then `more` waits
        in chunks (a submit's wait that runs out answers 504 without the job's id, so it is not chunked itself)."""
        if limit <= self._chunk():
            try:
                reply = self._json(self._request("POST", "/jobs", {"wait": f"{limit:.3f}"}, fields, limit))
            except Refused as e:  # (refused before anything is submitted)
                if not self._learn(e):
                    raise
                return self._submit_and_wait(fields, limit)
            job = reply.pop("job")
            self._then = lambda: {"job": job}
        else:
            reply = self._json(self._request("POST", "/jobs", {}, fields, 0.0))
            job_id = int(reply["ids"][0])
            self._then = lambda: self._wait({"id": job_id, "timeout": limit})
        return reply

    def _wait(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A wait for one job (`id`) or many (`ids`), `timeout` seconds (none: for ever), in requests of at most
        WAIT_CHUNK seconds; the reply and the refusal are tq-host's (a wait for many: `jobs` and `pending`)."""
        timeout = fields.pop("timeout", None)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        finished: list[dict[str, Any]] = []
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            last = left is not None and left <= self._chunk()
            chunk = left if left is not None and last else self._chunk()
            try:
                reply = self._json(self._request("POST", "/wait", {}, fields | {"timeout": chunk}, chunk))
            except JobTimeout:
                if last:
                    raise
                continue
            except Refused as e:
                if not self._learn(e):
                    raise
                continue
            if "ids" not in fields:
                return reply
            finished += reply.get("jobs", [])
            pending = [int(i) for i in reply.get("pending", [])]
            if not pending or last:
                return {"jobs": finished, "pending": pending}
            fields["ids"] = pending

    def _chunk(self) -> float:
        """The longest wait one request asks for."""
        return min(WAIT_CHUNK, self._max_wait)

    def _learn(self, e: Refused) -> bool:
        """The gateway refused a wait past its `max_wait` (it says how long it allows): True once that is the
        chunk from now on; False for any other refusal, or a gateway that allows no wait at all."""
        said = re.search(r"at most ([0-9.]+)s \(\[gateway\] max_wait\)", str(e))
        most = float(said.group(1)) if said else 0.0
        if not 0 < most < self._max_wait:
            return False
        self._max_wait = most
        return True

    def _subscribe(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The event stream, on a connection of its own, answered (or refused) before this returns."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if not fields.get("recent"):
            fields.pop("recent", None)
        conn = self._connection(fresh=True)
        try:
            answer, resp = self._send(conn, "GET", self.prefix + "/events", fields, None, STREAM_SILENCE,
                                      "text/event-stream")
        except _Dropped:
            raise HostUnreachable(self._closed()) from None
        if resp is None:
            conn.close()
            self._checked(answer)
            raise HostUnreachable(f"tq-gateway at {self.url} answered no event stream ({answer.content_type})")
        self._feed = EventFeed(conn, resp, self.url)
        return {"events": []}

    def stream(self, recent: list[dict[str, Any]]) -> Iterator[bytes]:
        """The subscription's events: chunks of whole JSON lines, as tq-host's `_stream` gives them."""
        if recent:
            yield b"".join(control.encode(e) for e in recent)
        while self._feed is not None:
            yield self._feed.events()
        raise HostUnreachable(f"lost tq-gateway at {self.url}: the connection was closed")

    def _closed(self) -> str:
        """A connection the gateway closed without an answer; over http, maybe a gateway that serves HTTPS."""
        hint = "" if self.https else " (if it serves HTTPS, the URL must say https://)"
        return f"lost tq-gateway at {self.url}: it closed the connection{hint}"

    # ---- HTTP ---------------------------------------------------------------------

    def _request(self, method: str, path: str, query: dict[str, Any], body: dict[str, Any] | None, wait: float,
                 absolute: bool = False) -> Answer:
        """One request on the kept-alive connection, and its whole answer."""
        target = path if absolute else self.prefix + path
        for attempt in (1, 2):
            reused = self._used and self._http is not None
            conn = self._connection()
            try:
                answer, _ = self._send(conn, method, target, query, body, wait)
                return answer
            except _Dropped:
                if attempt == 2 or not reused or method not in _RETRIED:
                    raise HostUnreachable(self._closed()) from None
        raise AssertionError("unreachable")

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        """The kept-alive connection (made again when the gateway has closed it meanwhile), or a `fresh` one."""
        if not fresh and self._http is not None:
            if not self._used or not _closed_by_peer(self._http):
                return self._http
            self._http.close()
        if self.https:
            if self._context is None:
                self._context = _tls_context(self.ca_file)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(self.host, self.port,
                                                                          context=self._context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port)
        if not fresh:
            self._http, self._used = conn, False
        return conn

    def _send(self, conn: http.client.HTTPConnection, method: str, target: str, query: dict[str, Any],
              body: dict[str, Any] | None, wait: float,
              stream: str | None = None) -> tuple[Answer, http.client.HTTPResponse | None]:
        """Send a request on `conn` and read its answer; with `stream` (a media type), a 200 answer of that type
        is left unread (returned for the caller to read)."""
        headers = dict(self.headers)
        try:
            if query:
                target += "?" + urlencode({k: _text(v) for k, v in query.items()})
            data = None if body is None else control.encode(body)
        except UnicodeEncodeError as e:  # a lone surrogate: bytes that were not UTF-8
            raise Refused(f"a request's text must be UTF-8: {e.object[e.start:e.end]!r} is not (bytes that were "
                          "not UTF-8 text in a name, argument or payload)") from None
        if data is not None:
            headers["Content-Type"] = "application/json"
        if stream is not None:
            headers["Accept"] = stream
        timeout = None if self.timeout is None else self.timeout + wait
        try:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            content_type = resp.getheader("Content-Type", "")
            if stream is not None and resp.status == 200 and content_type.startswith(stream):
                return Answer(resp.status, content_type, b"", target), resp
            answer = Answer(resp.status, content_type, resp.read(), target)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            conn.close()
            raise _Dropped from None
        except TimeoutError:
            conn.close()
            raise HostUnreachable(f"tq-gateway at {self.url} did not answer within the client's timeout "
                                  f"({self.timeout}s)") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise HostUnreachable(f"tq-gateway is not reachable at {self.url}: {reason(e, self.host)}") from None
        if conn is self._http:
            self._used = True
        return answer, None

    def _checked(self, answer: Answer) -> Answer:
        """A success answer as it is; an error answer raises the exception of its code."""
        if 200 <= answer.status < 300:
            return answer
        raise self._error(answer)

    def _json(self, answer: Answer) -> dict[str, Any]:
        answer = self._checked(answer)
        try:
            reply = json.loads(answer.body) if answer.content_type.startswith("application/json") else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise HostUnreachable(f"{self.url} did not answer as tq-gateway does ({answer.status}, "
                                  f"{answer.content_type or 'no content type'}): is it tq-gateway's URL?")
        return reply

    def _error(self, answer: Answer) -> TqError:
        """The exception for an error answer: tq's code from its JSON, else one the HTTP status says (a proxy's)."""
        try:
            error = json.loads(answer.body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            text = f"tq-gateway at {self.url} answered {answer.status} {http.client.responses.get(answer.status, '')}"
            text = text.rstrip()
            if answer.status >= 500:
                return HostUnreachable(text)
            return PermissionDenied(text) if answer.status in (401, 403) else Refused(text)
        if answer.status == 404 and message.startswith("no route "):  # (gateway/errors.py NO_ROUTE): not a missing job
            return Refused(f"tq-gateway at {self.url} has no {answer.target.partition('?')[0]}: is the URL right?")
        if code == "unavailable":  # tq-host down behind the gateway: its socket path means nothing here
            for said in (HOST_UNREACHABLE, OLD_HOST_UNREACHABLE):
                if message.startswith(said):
                    message = f"tq-gateway at {self.url} cannot reach its tq-host{message.removeprefix(said)}"
        if code not in control.ERRORS and answer.status in (401, 403):
            return PermissionDenied(message)  # (a code this client does not know, such as a newer gateway's)
        return refusal(code, message)


class _Dropped(Exception):
    """The gateway closed a kept-alive connection before answering."""


def _checked_url(url: str) -> SplitResult:
    from .clienterrors import masked_url

    shown = masked_url(url)  # (never a password or token in an error message)
    try:
        parts = urlsplit(url)
        _ = parts.port  # (a port that is not a number raises here)
    except ValueError as e:
        raise Refused(f"not a URL of tq-gateway: {shown!r} ({str(e).replace(url, shown)})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"not a URL of tq-gateway: {shown!r} (expected http://HOST:PORT or https://HOST:PORT)")
    if parts.username is not None or parts.password is not None:
        raise Refused(f"the URL {shown} carries a user or password: give the token on its own (tqctl: "
                      "--token-file FILE)")
    if parts.query or parts.fragment:
        raise Refused(f"a URL of tq-gateway has no query or fragment: {shown!r}")
    return parts


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise Refused(f"cannot read the CA file {ca_file}: {getattr(e, 'strerror', None) or e}") from None


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection that is readable has been closed by the gateway (or is unusable)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
