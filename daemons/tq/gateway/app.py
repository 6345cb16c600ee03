"""The aiohttp application: the collaborators the handlers share (`Parts`), the middleware that turns every
refusal into tq's JSON error, and `make_app`, which puts each module's route table on one application.

A module that serves routes (api.py, live.py, xmlrpc.py, and the dashboard's) is a class given `Parts` whose
`routes()` lists them; `make_app(parts, tables)` takes those tables, so a new one is a line where the gateway is
assembled (service.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .. import config, control
from ..control import RequestError
from . import errors
from .auth import TOKEN_KEY, Auth
from .hostlink import HostLinks
from .limits import Limits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Settings:
    """The running configuration; a reload replaces `cfg` (handlers read it at each request)."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def gateway(self) -> config.GatewayConfig:
        return self.cfg.gateway


@dataclass(frozen=True)
class Parts:
    """What the route tables share."""

    settings: Settings
    links: HostLinks
    auth: Auth
    limits: Limits
    logger: logging.Logger


class RouteTable(Protocol):
    def routes(self) -> Iterable[web.RouteDef]: ...


def make_app(parts: Parts, tables: Iterable[RouteTable]) -> web.Application:
    cfg = parts.settings.gateway()
    # A kept-alive connection's next request, and the unread rest of a refused body, get request_timeout too.
    app = web.Application(middlewares=[_errors(parts)], client_max_size=cfg.max_body,
                          handler_args={"keepalive_timeout": cfg.request_timeout,
                                        "lingering_time": cfg.request_timeout})
    for table in tables:
        app.add_routes(table.routes())
    return app


def _errors(parts: Parts) -> Any:
    """Every answer that is not a success becomes `{"error": {"code", "message"}}` with its HTTP status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        parts.limits.begin(request)
        if parts.limits.over():
            resp = errors.response("unavailable", "tq-gateway has too many connections: try again later")
            resp.force_close()
            return resp
        try:
            return await handler(request)
        except RequestError as e:
            if e.code == "unauthorized" and TOKEN_KEY in request:
                parts.auth.refused(request, request[TOKEN_KEY], str(e))  # revoked since its link was made
            resp = errors.for_exception(e)
            if resp.status == errors.SLOW:
                await _close_after(request, resp)
            return resp
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return errors.for_http_exception(e, f"{request.method} {request.path[:200]}")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # a bug costs one request, never the gateway
            parts.logger.exception("internal error on %s %.200s", request.method, request.path_qs)
            return errors.response("internal", "internal error in tq-gateway (logged)")

    return middleware


async def _close_after(request: web.Request, resp: web.StreamResponse) -> None:
    """Send `resp` and close the connection: a 408 leaves at request_timeout, and the connection goes with it.
    (Left to aiohttp, it would first read the slow body's rest for lingering_time, which serves a client still
    sending a refused body, not one that stopped.)"""
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()  # (the transport sends what it holds, then closes)


async def read_body(request: web.Request, timeout: float) -> bytes:
    """A request's body, read within `timeout` seconds: a slow one is answered 408 (and its connection closed:
    errors.for_exception)."""
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise errors.Refusal("bad_request", f"the request body did not arrive within {timeout:g}s",
                             errors.SLOW) from None


async def read_json(request: web.Request, allowed: Iterable[str], timeout: float) -> dict[str, Any]:
    """A request's JSON object body ({} when empty; read_body's deadline); a field not in `allowed` is refused,
    named."""
    raw = await read_body(request, timeout)
    if not raw.strip():
        return {}
    try:
        body = control.loads(raw)  # (no NaN, infinity or lone surrogate: tq-host would refuse them too)
    except control.Unfit as e:
        raise errors.bad_request(f"the body: {e}") from None
    except (ValueError, RecursionError) as e:
        raise errors.bad_request(f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a JSON object")
    known = set(allowed)
    for name in body:
        if name not in known:
            raise errors.bad_request(f"unknown field {name[:60]!r} (this request takes "
                                     f"{', '.join(sorted(known)) or 'no body'})")
    return body
