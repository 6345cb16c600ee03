"""The gateway's error answers: `{"error": {"code", "message"}}` with the HTTP status of tq's code
(control.ERRORS), and the refusals the gateway makes itself (401 with how to authenticate, 429, 503 at its limits).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .. import control
from ..control import RequestError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tq", Basic realm="tq"'}
UNAUTHORIZED = 401
TOO_MANY = 429
SLOW = 408  # a request body that did not arrive in time


class Refusal(RequestError):
    """A refusal the gateway makes: tq's code, and an HTTP status or headers of its own where the code's do not say
    it (429 for too many failed tokens; 401 with a challenge)."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status if status is not None else http_status(code)
        self.headers = dict(headers or {})


def http_status(code: str) -> int:
    entry = control.ERRORS.get(code)
    if entry is not None:
        return entry.http_status
    return UNAUTHORIZED if code == "unauthorized" else 500


def bad_request(message: str) -> Refusal:
    return Refusal("bad_request", message)


def response(code: str, message: str, status: int | None = None,
             headers: Mapping[str, str] | None = None) -> web.Response:
    status = http_status(code) if status is None else status
    if status == UNAUTHORIZED:
        headers = {**CHALLENGE, **(headers or {})}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def for_exception(e: RequestError) -> web.Response:
    if not isinstance(e, Refusal):
        return response(e.code, str(e))
    resp = response(e.code, str(e), e.status, e.headers)
    if e.status == SLOW:
        resp.force_close()  # the rest of its body may yet come: the connection cannot carry another request
    return resp


# aiohttp's own refusals (no route, wrong method, a body over client_max_size ...) as tq's codes.
_HTTP_CODES = {404: "not_found", 413: "too_large", 503: "unavailable", 500: "internal"}


NO_ROUTE = "no route "  # the start of a 404's message for a path the gateway does not serve (not a missing job)


def for_http_exception(e: web.HTTPException, target: str) -> web.Response:
    """`target`: the request's method and path."""
    code = _HTTP_CODES.get(e.status, "bad_request" if e.status < 500 else "internal")
    message = e.reason if e.status != 413 else f"the request body is too large: {e.text or e.reason}"
    if e.status == 404:
        message = f"{NO_ROUTE}{target} (the API is under /api/v1: docs/gateway.md)"
    allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
    return response(code, message, e.status, allow)
