"""The control channel between tqctl (the client API) and tq-host.

A Unix stream socket (`host.socket`, mode 0660, group tq), so the kernel checks
access and SO_PEERCRED tells the host who submitted. Each request and reply is
one line of JSON; a reply carries the request's `rid`. Errors carry a `code`
that the client maps to an exception and tqctl to an exit status.
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 64 * 1024 * 1024

# error codes -> tqctl exit status (SPEC §3)
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_PERMISSION, EXIT_NOT_FOUND, EXIT_TIMEOUT = range(1, 7)
CODE_EXIT = {
    "bad_request": EXIT_USAGE,
    "unknown_task": EXIT_USAGE,
    "too_large": EXIT_USAGE,
    "conflict": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "timeout": EXIT_TIMEOUT,
    "unavailable": EXIT_UNREACHABLE,
    "permission": EXIT_PERMISSION,
}


class RequestError(Exception):
    """A request the host refuses: `code` is one of CODE_EXIT's keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# One encoder for the process: json.dumps with options builds a new JSONEncoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()


def encode(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        obj = _DECODER.decode(line.decode())  # (json.loads would first guess the encoding: it is UTF-8)
    except (ValueError, RecursionError) as e:
        raise RequestError("bad_request", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError("bad_request", "a request is a JSON object")
    return obj


def field(req: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A typed field of a request, or RequestError naming it."""
    if name not in req or req[name] is None:
        if default is ...:
            raise RequestError("bad_request", f"missing field {name!r}")
        return default
    value = req[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RequestError("bad_request", f"field {name!r} has the wrong type")
    return value
