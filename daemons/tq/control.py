"""The control channel between tqctl (the client API) and tq-host.

A Unix stream socket (`host.socket`, mode 0660, group tq), so the kernel checks
access and SO_PEERCRED tells the host who submitted. Each request and reply is
one line of JSON; a reply carries the request's `rid`. Errors carry a `code`
that the client maps to an exception and tqctl to an exit status: ERRORS, the
one table of codes, says for each its exit status, its HTTP status (for a
gateway) and what it means.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, NamedTuple

MAX_LINE = 64 * 1024 * 1024
MIN_TIMEOUT = 0.001  # a job's timeout, seconds: 1ms, as tqctl, the API and a task's timeout key take it
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # mqueue.max_message_size's ceiling: no job, its payload included, is larger
_FLOAT_INT = int(sys.float_info.max)  # a number field's largest whole number: JSON's are unbounded

# tqctl's exit statuses (SPEC §3; 0 is ok, 130 interrupted)
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_PERMISSION, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_INTERNAL = range(1, 8)


class ErrorCode(NamedTuple):
    """What a refusal's code means, and how each client says it. (A NamedTuple: dataclasses would cost tqctl's
    start some milliseconds.)"""

    exit_status: int  # tqctl's (the client's exception carries it as `exit_code`)
    http_status: int  # a gateway's
    meaning: str


# Every code tq-host refuses a request with. HTTP: unknown_task is 422 (the request is well formed, the name
# unknown) where bad_request is 400; timeout is 504, the answer did not come in time, and not 408, which says the
# client was slow to send and lets HTTP clients repeat the request (a repeated submit-and-wait submits again).
ERRORS: dict[str, ErrorCode] = {
    "bad_request": ErrorCode(EXIT_USAGE, 400, "the request is malformed: not JSON, a field missing or mistyped, a "
                                              "value out of range"),
    "unknown_task": ErrorCode(EXIT_USAGE, 422, "no task of that name in the configuration"),
    "too_large": ErrorCode(EXIT_USAGE, 413, "a job's message exceeds the queue's message size"),
    "conflict": ErrorCode(EXIT_USAGE, 409, "the job's (or worker's) state does not allow it (retry a running job, "
                                           "submit after a dead one, forget a live worker)"),
    "not_found": ErrorCode(EXIT_NOT_FOUND, 404, "no such job (or worker, or queue)"),
    "timeout": ErrorCode(EXIT_TIMEOUT, 504, "a wait ran out of time; the job stays submitted"),
    "unavailable": ErrorCode(EXIT_UNREACHABLE, 503, "tq-host cannot serve it now (out of resources, or its store "
                                                    "failed); the same request may succeed later"),
    "permission": ErrorCode(EXIT_PERMISSION, 403, "the access rules refuse the caller"),
    "unauthorized": ErrorCode(EXIT_PERMISSION, 401, "no valid token: unknown or revoked (act_as, a gateway's "
                                                    "caller)"),
    "internal": ErrorCode(EXIT_INTERNAL, 500, "a fault inside tq-host (a bug, in its journal); not the request's"),
}


class RequestError(Exception):
    """A request the host refuses: `code` is one of ERRORS' keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# One encoder for the process: json.dumps with options builds a new JSONEncoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_FINITE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # the escape of a surrogate: a lone one is no text


class Unfit(ValueError):
    """JSON that tq does not take: NaN or an infinity (Python's json reads them; JSON has none, and what was
    answered with them would be no JSON), or text with a lone surrogate (no UTF-8 text)."""


def _constant(name: str) -> Any:
    raise Unfit(f"{name} is not a JSON number (JSON has no NaN or infinity)")


def _float(text: str) -> float:
    """A float literal (called for those only: the common request has none): one past a double's range, such as
    1e400, would read as an infinity, and is refused as the literal Infinity is."""
    value = float(text)
    if value - value != 0.0:  # (inf - inf is NaN; a finite value's is 0)
        raise Unfit(f"{text[:40]} is too large a number: past a double's range (about 1.8e308) it would be an "
                    "infinity, and JSON has none")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)
_LENIENT = json.JSONDecoder()  # (only to find a refused request's rid)


def encode(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"


def encode_out(obj: dict[str, Any]) -> bytes:
    """encode for what tq-host writes: never a NaN or infinity (invalid JSON to every other reader), such a
    number written as null (none comes in from a request: decode refuses them)."""
    try:
        return _FINITE.encode(obj).encode() + b"\n"
    except UnicodeEncodeError:
        raise
    except ValueError:
        return _FINITE.encode(_finite(obj)).encode() + b"\n"


def encode_finite(obj: dict[str, Any]) -> bytes:
    """encode for a request passed on (the gateway's): Unfit for a NaN or an infinity, which tq-host refuses."""
    try:
        return _FINITE.encode(obj).encode() + b"\n"
    except UnicodeEncodeError:
        raise
    except ValueError:
        raise Unfit("a number is NaN or an infinity (JSON has neither; one past a double's range, such as 1e400, "
                    "is an infinity)") from None


def rid_of(line: bytes) -> Any:
    """The rid of a request `decode` refused, if it can be read at all (a refusal then carries it: a client
    matching replies by rid is not left waiting); None if not. Only on that error path: it reads the line again."""
    try:
        obj = _LENIENT.decode(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    rid = obj.get("rid") if isinstance(obj, dict) else None
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def loads(data: bytes | str) -> Any:
    """JSON as tq takes it (UTF-8): Unfit for a NaN, an infinity or a lone surrogate; ValueError (or
    RecursionError) for what is not JSON."""
    text = data.decode() if isinstance(data, bytes) else data  # (json.loads would first guess the encoding)
    obj = _DECODER.decode(text)
    if "\\u" in text:  # (rare: an escape, the only way a lone surrogate comes in)
        _text_only(text, obj)
    return obj


def _text_only(text: str, obj: Any) -> None:
    """Unfit if `obj`, read from `text`, holds a string with a lone surrogate (only an escape makes one)."""
    if _SURROGATE.search(text):  # (rarer still: only then is each string looked at)
        bad = _not_text(obj)
        if bad is not None:
            raise Unfit(f"text must be UTF-8: {bad[0] or 'the value'} holds {bad[1]!r}, an escaped lone surrogate")


def _not_text(obj: Any) -> tuple[str, str] | None:
    """Where the first string that is no UTF-8 text is (a path such as `jobs[0].args[1]`), and it; None if none.
    (A loop, not recursion: the JSON may nest as deep as the decoder went.)"""
    todo: list[tuple[str, Any]] = [("", obj)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return path, value
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                todo.append((f"{path}.{key}" if path else str(key), item))
                todo.append((f"{path} (a name)" if path else "a name", key))
        elif isinstance(value, list):
            todo.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def decode(line: bytes) -> dict[str, Any]:
    """A request: `loads`, written out (tq-host decodes one for every request it takes)."""
    try:
        text = line.decode()
        obj = _DECODER.decode(text)
        if "\\u" in text:
            _text_only(text, obj)
    except Unfit as e:
        raise RequestError("bad_request", str(e)) from None
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
    if float in kinds and type(value) is int and not -_FLOAT_INT <= value <= _FLOAT_INT:  # float() would overflow
        raise RequestError("bad_request", f"field {name!r} is out of range")
    return value
