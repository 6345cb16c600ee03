"""The client's exceptions, one per exit status of tqctl, and the refusal code each stands for (control.ERRORS).

tq.client re-exports them (`from tq.client import Refused` is the public name); they live here so that both of
the client's connections raise them, the Unix socket's (client.py) and tq-gateway's (remote.py), without either
module importing the other.
"""

from __future__ import annotations

from typing import Any

from . import control


class TqError(Exception):
    """Base of the client's errors; `exit_code` is tqctl's exit status for it."""

    exit_code = control.EXIT_FAILED


class Refused(TqError):
    """The host refused the request (bad input, unknown task, too large, wrong state)."""

    exit_code = control.EXIT_USAGE


class HostUnreachable(TqError):
    exit_code = control.EXIT_UNREACHABLE


class PermissionDenied(TqError):
    exit_code = control.EXIT_PERMISSION


class Unauthorized(PermissionDenied):
    """No valid token: unknown or revoked (act_as; through tq-gateway, the token of `Client(url=, token=)`)."""


class NotFound(TqError):
    exit_code = control.EXIT_NOT_FOUND


class JobTimeout(TqError, TimeoutError):
    """A wait ran out of time. `finished` holds the jobs that did finish, by id, and `pending` the ids that did
    not (from wait and submit_and_wait: the one job's id)."""

    exit_code = control.EXIT_TIMEOUT

    def __init__(self, message: str, finished: dict[int, dict[str, Any]] | None = None,
                 pending: list[int] | None = None) -> None:
        super().__init__(message)
        self.finished = finished or {}
        self.pending = pending or []


class InternalError(TqError):
    """A fault inside tq-host (a bug; its journal says more), not in the request."""

    exit_code = control.EXIT_INTERNAL


# A refusal's code -> its exception: the one whose exit status control.ERRORS gives the code (Refused for a code
# this client does not know).
_BY_EXIT: dict[int, type[TqError]] = {e.exit_code: e for e in (Refused, HostUnreachable, PermissionDenied, NotFound,
                                                               JobTimeout, InternalError)}
ERRORS = {code: _BY_EXIT[e.exit_status] for code, e in control.ERRORS.items()} | {"unauthorized": Unauthorized}


def masked_url(url: str) -> str:
    """`url` fit for an error message: a user and password in it shown as `user:***@` (a user alone as `***@`,
    it may be a token), as tq shows a broker's URL. Text, not a parse: a URL too broken to split is masked too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user + ':***' if colon else '***'}@{host}"


def refusal(code: str, message: str) -> TqError:
    """The exception for a refusal with tq's error `code`."""
    return ERRORS.get(code, Refused)(message)
