"""XML-RPC at POST /RPC2, parsed and written by the standard library (xmlrpc.client.loads and dumps).

Methods: `submit(task, args[, options])` -> the job's id; `call(task, args[, options])` -> the job's result,
once it has ended (submit and wait, at most `[gateway] max_wait`); `get(id)` -> the job; `status()`. A refusal
or a job that did not end done (dead, cancelled, failed) is an XML-RPC fault whose faultCode is tqctl's exit
status for it (control.ERRORS; a job that ended badly: 1, a wait past its time: 6) and whose faultString names
the job and its error. XML-RPC has no nil (without an extension) and its integers are 32-bit: a value None is
left out of a struct (and is "" elsewhere), a larger integer is sent as its decimal string. A number is written
in ASCII digits (fault 2 otherwise: the standard library's int() and float() would read an Arabic-Indic 1, U+0661).

A body that holds a DOCTYPE is refused before it is parsed: the standard parser (expat) would expand the
entities it declares, and no XML-RPC call needs one. Bodies over `[gateway] max_body` are refused by aiohttp
(413) before they are read whole.
"""

from __future__ import annotations

import decimal
import math
import re
import xmlrpc.client
from collections.abc import Callable
from typing import Any
from xml.parsers.expat import ExpatError

from aiohttp import web

from .. import control
from ..configfiles import parse_duration
from ..control import RequestError
from .app import Parts, read_body
from .hostlink import HostLink

INT_MAX = 2**31 - 1
MAX_DEPTH = 100  # arrays and structs nested at most, in a call and an answer (each level costs stack)
OPTIONS = frozenset(("queue", "priority", "delay", "at", "timeout", "retries", "unique", "after", "payload"))
INTEGER_TAGS = frozenset(("i1", "i2", "i4", "i8", "int", "biginteger"))
DOUBLE_TAGS = frozenset(("double", "float", "bigdecimal"))
INTEGER = re.compile(r"\s*[-+]?[0-9]+\s*", re.ASCII)  # an integer's text (int() takes spaces around it too)


class Fault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


End = Callable[[xmlrpc.client.Unmarshaller, str], None]


def _is_integer(text: str) -> bool:
    return INTEGER.fullmatch(text) is not None


def _is_double(text: str) -> bool:
    return text.isascii() and "_" not in text  # (float() reads "inf" and "nan": _taken refuses them, named)


def _ascii_number(end: End, check: Callable[[str], bool], what: str) -> End:
    """The standard library's end of a number element, its text first checked: its int(), float() and Decimal()
    also take other scripts' digits (Arabic-Indic, U+0661 as 1; fullwidth, U+FF11) and "1_0"."""
    def checked(target: xmlrpc.client.Unmarshaller, data: str) -> None:
        if not check(data):
            raise Fault(control.EXIT_USAGE, f"{what} is written in digits 0-9, not {data[:60]!r}")
        end(target, data)
    return checked


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    """xmlrpc.client's, whose numbers are in ASCII digits (fault 2 otherwise), as a job id is everywhere."""

    dispatch = {tag: _ascii_number(end, _is_integer, "an integer") if tag in INTEGER_TAGS else
                _ascii_number(end, _is_double, "a double") if tag in DOUBLE_TAGS else end
                for tag, end in xmlrpc.client.Unmarshaller.dispatch.items()}


class XmlRpc:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/RPC2", self.rpc)]

    async def rpc(self, request: web.Request) -> web.Response:
        link = await self.parts.auth.link(request)  # 401 (with its challenge) is HTTP's: ServerProxy says it
        raw = await read_body(request, self.parts.settings.gateway().request_timeout)
        try:
            params, method = self._parse(raw)
            result = await self._dispatch(link, method, params)
            body = xmlrpc.client.dumps((_plain(result, _deep(method, params)),), methodresponse=True)
        except Fault as e:
            body = xmlrpc.client.dumps(xmlrpc.client.Fault(e.code, str(e)))
        except RequestError as e:
            if e.code == "unauthorized":
                raise  # (a token revoked since: the middleware answers 401)
            body = xmlrpc.client.dumps(xmlrpc.client.Fault(_exit_status(e.code), str(e)))
        return web.Response(body=body.encode(), content_type="text/xml", charset="utf-8")

    @staticmethod
    def _parse(raw: bytes) -> tuple[tuple[Any, ...], str]:
        lowered = raw.lower()
        if b"<!doctype" in lowered or b"<!entity" in lowered or b"\0" in raw:  # (NUL: UTF-16 would hide them)
            raise Fault(control.EXIT_USAGE, "a DOCTYPE, an entity declaration or a NUL byte is refused")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Fault(control.EXIT_USAGE, "an XML-RPC call is UTF-8 text") from None
        try:
            params, method = _loads(raw)
        except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError, OverflowError) as e:
            raise Fault(control.EXIT_USAGE, f"not an XML-RPC call: {e}") from None
        if not isinstance(method, str):
            raise Fault(control.EXIT_USAGE, "not an XML-RPC call: no methodName")
        _taken(params)
        return params, method

    async def _dispatch(self, link: HostLink, method: str, params: tuple[Any, ...]) -> Any:
        if method == "submit":
            spec = _spec(params, "submit")
            return (await link.call("submit", jobs=[spec]))["ids"][0]
        if method == "call":
            return await self._call(link, _spec(params, "call"))
        if method == "get":
            if len(params) != 1 or type(params[0]) is not int or params[0] < 1:
                raise Fault(control.EXIT_USAGE, "get takes one argument: a job id (a whole number from 1)")
            return (await link.call("get", id=params[0]))["job"]
        if method == "status":
            if params:
                raise Fault(control.EXIT_USAGE, "status takes no arguments")
            return await link.call("status")
        raise Fault(control.EXIT_USAGE, f"no method {method[:60]!r} (methods: submit, call, get, status)")

    async def _call(self, link: HostLink, spec: dict[str, Any]) -> Any:
        wait = self.parts.settings.gateway().max_wait
        ids, done = await link.call_many("submit", 2, wait, jobs=[spec], wait_for=wait)
        job = done["job"]
        if job.get("state") != "done":
            error = job.get("error") or job.get("state")
            raise Fault(control.EXIT_FAILED, f"job {job.get('id', ids['ids'][0])} ({spec['task']}) ended "
                                             f"{job.get('state')}: {error}")
        return job.get("result")


def _loads(raw: bytes) -> tuple[tuple[Any, ...], str | None]:
    """xmlrpc.client.loads with _Unmarshaller."""
    target = _Unmarshaller()
    parser = xmlrpc.client.ExpatParser(target)
    parser.feed(raw)
    parser.close()
    return target.close(), target.getmethodname()


def _spec(params: tuple[Any, ...], method: str) -> dict[str, Any]:
    """(task, args[, options]) as submit's job."""
    if not 1 <= len(params) <= 3 or not isinstance(params[0], str):
        raise Fault(control.EXIT_USAGE, f"{method} takes (task, args[, options]): a task name, an array and a struct")
    args = params[1] if len(params) > 1 else []
    options = params[2] if len(params) > 2 else {}
    if not isinstance(args, list) or not isinstance(options, dict):
        raise Fault(control.EXIT_USAGE, f"{method}: args must be an array and options a struct")
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise Fault(control.EXIT_USAGE, f"{method}: unknown option {unknown[0][:60]!r} (options: "
                                        f"{', '.join(sorted(OPTIONS))})")
    spec = {"task": params[0], "args": args, **options}
    for name in ("delay", "timeout"):  # (seconds, or a duration as in the JSON API: "30s", "5m")
        if isinstance(spec.get(name), str):
            try:
                spec[name] = float(parse_duration(spec[name]))
            except ValueError as e:
                raise Fault(control.EXIT_USAGE, f"{method}: {name}: {e}") from None
    return spec


def _exit_status(code: str) -> int:
    entry = control.ERRORS.get(code)
    return entry.exit_status if entry is not None else control.EXIT_PERMISSION


def _taken(value: Any, depth: int = 0) -> None:
    """Fault 2 for a parameter tq cannot take: a dateTime, base64 or bigdecimal (JSON has none: give seconds since
    the epoch, text, a double), a NaN or infinite double (tq-host would refuse it: JSON has none), or arrays and
    structs nested more than MAX_DEPTH deep. (nil is taken: None, as JSON's null.)"""
    if isinstance(value, (xmlrpc.client.DateTime, xmlrpc.client.Binary, decimal.Decimal)):
        kind = ("dateTime.iso8601" if isinstance(value, xmlrpc.client.DateTime) else
                "base64" if isinstance(value, xmlrpc.client.Binary) else "bigdecimal")
        raise Fault(control.EXIT_USAGE, f"a {kind} value is not taken: tq's values are JSON's (a time is seconds "
                                        "since the epoch, a double; bytes go as text; a number is a double or an "
                                        "integer)")
    if isinstance(value, float) and not math.isfinite(value):
        raise Fault(control.EXIT_USAGE, f"a double is {value!r}: tq's values are JSON's, which has no NaN or "
                                        "infinity")
    if isinstance(value, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise Fault(control.EXIT_USAGE, f"arrays and structs nested too deep (more than {MAX_DEPTH})")
        for item in value.values() if isinstance(value, dict) else value:
            _taken(item, depth + 1)


def _deep(method: str, params: tuple[Any, ...]) -> str:
    """What a result nested too deep for XML-RPC says (a job's args, as POST /api/v1/jobs may take them)."""
    where = f": GET /api/v1/jobs/{params[0]} answers it as JSON" if method == "get" and params else ""
    return f"the answer is nested too deep for XML-RPC (more than {MAX_DEPTH} arrays or structs){where}"


def _plain(value: Any, deep: str = "the answer is nested too deep for XML-RPC", depth: int = 0) -> Any:
    """A value XML-RPC can carry: no None (left out of structs, "" elsewhere), integers within 32 bits; nested
    more than MAX_DEPTH deep, fault 2 saying `deep` (the standard library's writer recurses)."""
    if value is None:
        return ""
    if isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        return value if -INT_MAX - 1 <= value <= INT_MAX else str(value)
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        raise Fault(control.EXIT_USAGE, deep)
    if isinstance(value, dict):
        return {str(k): _plain(v, deep, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v, deep, depth + 1) for v in value]
    return str(value)
