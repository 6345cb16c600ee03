"""What keeps a flood of connections from taking the gateway down: a count of them, and a deadline on requests.

aiohttp 3.8 has no timeout on a request's headers: a client that opens a connection and sends half a header
(slowloris) would hold it for ever. `GuardedSite` serves a listening socket as aiohttp's SockSite does, but each
connection it accepts is given `request_timeout` seconds to deliver its first request's headers, or is closed.
Later requests on a kept-alive connection are bounded by aiohttp's keepalive_timeout (set to the same), and the
bodies the gateway reads by `read_body`'s deadline. Connections past `max_connections` are answered 503 and
closed (the middleware in app.py asks `over`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..config import GatewayConfig


class Limits:
    """The connections open now, and those that have not begun a request yet."""

    def __init__(self, cfg: Callable[[], GatewayConfig]) -> None:
        self.cfg = cfg
        self.server: web.Server | None = None  # aiohttp's (GuardedSite.start): its `connections` are those open
        self.fresh: dict[int, RequestHandler] = {}  # by id: connections within their first request's deadline
        self.dropped = 0  # connections closed for not sending a request in time

    @property
    def connections(self) -> int:
        return 0 if self.server is None else len(self.server.connections)

    def admit(self, handler: RequestHandler) -> RequestHandler:
        """A new connection's protocol: closed unless a request starts within the deadline."""
        self.fresh[id(handler)] = handler
        asyncio.get_running_loop().call_later(self.cfg().request_timeout, self._deadline, handler)
        return handler

    def _deadline(self, handler: RequestHandler) -> None:
        if self.fresh.pop(id(handler), None) is None:
            return  # a request began
        transport = handler.transport
        if transport is not None and not transport.is_closing():
            self.dropped += 1
            transport.close()

    def begin(self, request: web.BaseRequest) -> None:
        self.fresh.pop(id(request.protocol), None)

    def over(self) -> bool:
        """More connections are open than `max_connections`."""
        return self.connections > self.cfg().max_connections


class GuardedSite(web.SockSite):
    """aiohttp's SockSite with each accepted connection handed to `Limits.admit`."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, limits: Limits,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, shutdown_timeout=2.0)
        self.limits = limits
        self.sock = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (SockSite.start would serve it)
        server = self._runner.server
        assert server is not None
        self.limits.server = server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.limits.admit(server()), sock=self.sock, ssl=self._ssl_context, backlog=self._backlog)
