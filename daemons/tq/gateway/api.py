"""The JSON API under /api/v1 (docs/gateway.md): each route a thin map to one tq-host operation.

A handler reads the path, the query and the body (unknown fields refused, named), asks tq-host on the caller's
link (auth.py) and answers its reply without `ok` and `rid`. Durations are seconds or "10s", "5m", "1h"; a wait
is at most `[gateway] max_wait`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from aiohttp import web

from .. import metrics as exposition
from ..configfiles import parse_duration
from ..control import RequestError
from ..routes import API, ROUTES
from . import errors
from .app import Parts, read_json
from .hostlink import HostLink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JOB_FIELDS = frozenset(("task", "args", "payload", "queue", "priority", "delay", "at", "timeout", "retries",
                        "unique", "after"))
FILTERS = ("state", "task", "queue", "older_than")
WHOLE = re.compile(r"-?[0-9]+")


def job_spec(value: Any, where: str = "the job") -> dict[str, Any]:
    """One job as submit takes it: submit's fields only, delay and timeout as seconds (tq-host checks the rest)."""
    if not isinstance(value, dict):
        raise errors.bad_request(f"{where} must be a JSON object with a \"task\"")
    for name in value:
        if name not in JOB_FIELDS:
            raise errors.bad_request(f"unknown field {str(name)[:60]!r} in {where} (a job takes "
                                     f"{', '.join(sorted(JOB_FIELDS))})")
    spec = dict(value)
    for name in ("delay", "timeout"):
        if isinstance(spec.get(name), str):
            spec[name] = seconds(spec[name], f"{where}: {name}")
    return spec


def seconds(value: Any, name: str, most: float | None = None) -> float:
    """A duration (a number, or "10s", "5m"), at most `most`."""
    try:
        value = parse_duration(value)
    except ValueError as e:
        raise errors.bad_request(f"{name}: {e}") from None
    if most is not None and value > most:
        raise errors.bad_request(f"{name}: at most {most:g}s ([gateway] max_wait)")
    return float(value)


def whole(value: str, name: str, low: int = 0) -> int:
    """A whole number written in ASCII digits (int() would also take "١٢", " 12" and "1_2")."""
    if not WHOLE.fullmatch(value):
        raise errors.bad_request(f"{name} must be a whole number, not {value[:60]!r}")
    try:
        number = int(value)  # (any length, as tqctl takes it: tq-host answers an id no job can have 404, no job N)
    except ValueError:  # (past Python's 4300 digits)
        raise errors.bad_request(f"{name} has too many digits ({len(value)})") from None
    if number < low:
        raise errors.bad_request(f"{name} must be at least {low}")
    return number


def query(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query's parameters, each once and known (an unknown one is refused, named)."""
    known = set(allowed)
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in known:
            raise errors.bad_request(f"unknown parameter {name[:60]!r} (this request takes "
                                     f"{', '.join(sorted(known)) or 'none'})")
        if name in out:
            raise errors.bad_request(f"parameter {name!r} given twice")
        out[name] = value
    return out


def served(handlers: dict[str, tuple[Handler, ...]]) -> list[web.RouteDef]:
    """Each op's routes (routes.ROUTES) with its handlers, in the same order."""
    return [web.route(route.method, API + route.path, handler)
            for op, ops_handlers in handlers.items() for route, handler in zip(ROUTES[op], ops_handlers, strict=True)]


def answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class Api:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> list[web.RouteDef]:
        """routes.ROUTES' requests, each with its handler here (events: live.py), and the Prometheus text."""
        cancel, retry = ((partial(self._one, op=op), partial(self._matching, op=op)) for op in ("cancel", "retry"))
        handlers: dict[str, tuple[Handler, ...]] = {
            "submit": (self.submit,), "get": (self.get,), "list": (self.list,), "wait": (self.wait,),
            "cancel": cancel, "retry": retry,
            "pause": (partial(self._steer, op="pause"),), "resume": (partial(self._steer, op="resume"),),
            "forget_worker": (self.forget_worker,), "whoami": (self.whoami,),
            "token_create": (self.token_create,), "token_revoke": (self.token_revoke,),
            **{op: (self.simple(op),) for op in ("queues", "workers", "schedules", "status", "metrics", "ping",
                                                 "token_list")},
        }
        return [*served(handlers), web.get("/metrics", self.metrics_text)]

    async def link(self, request: web.Request) -> HostLink:
        return await self.parts.auth.link(request)

    def max_wait(self) -> float:
        return self.parts.settings.gateway().max_wait

    async def body(self, request: web.Request, allowed: Iterable[str]) -> dict[str, Any]:
        return await read_json(request, allowed, self.parts.settings.gateway().request_timeout)

    def simple(self, op: str) -> Any:
        """A GET that is the op alone, without parameters."""
        async def handler(request: web.Request) -> web.Response:
            query(request, ())
            return answer(await (await self.link(request)).call(op))
        return handler

    # ---- jobs ---------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        """One job, `{"jobs": [...], "chain": bool}`, or `{"exchange", "key", "jobs": [one]}`; `?wait=` one job."""
        params = query(request, ("wait",))
        link = await self.link(request)  # (before the body: a caller without a token does not get it read)
        raw = await self.body(request, JOB_FIELDS | {"jobs", "chain", "exchange", "key"})
        fields: dict[str, Any] = {k: raw.pop(k) for k in ("chain", "exchange", "key") if k in raw}
        if "jobs" in raw:
            jobs = raw.pop("jobs")
            if raw:
                raise errors.bad_request(f"give one job's fields or \"jobs\", not both ({', '.join(sorted(raw))})")
            if not isinstance(jobs, list) or not jobs:
                raise errors.bad_request("jobs must be a non-empty list of jobs")
            fields["jobs"] = [job_spec(j, f"job {i + 1}") for i, j in enumerate(jobs)]
        else:
            fields["jobs"] = [job_spec(raw)]
        if "wait" not in params:
            reply = await link.call("submit", **fields)
            return answer(reply, 201)
        wait = seconds(params["wait"], "wait", self.max_wait())
        if len(fields["jobs"]) != 1 or fields.get("chain"):  # (said here in the API's terms, not tq-host's)
            raise errors.bad_request(f"?wait takes one job, not {len(fields['jobs'])}"
                                     f"{' in a chain' if fields.get('chain') else ''}: submit without it, then "
                                     "POST /api/v1/wait with their ids")
        ids, done = await link.call_many("submit", 2, wait, wait_for=wait, **fields)
        ids.pop("more", None)
        return answer(ids | {"job": done["job"]}, 201)

    async def get(self, request: web.Request) -> web.Response:
        """The job; with `?wait=`, once it has ended or the wait is over (as it is then)."""
        job_id = whole(request.match_info["id"], "the job id", 1)
        params = query(request, ("wait",))
        link = await self.link(request)
        if "wait" in params:
            wait = seconds(params["wait"], "wait", self.max_wait())
            try:
                await link.call("wait", wait, id=job_id, timeout=wait)
            except RequestError as e:
                if e.code != "timeout":
                    raise
        return answer(await link.call("get", id=job_id))

    async def wait(self, request: web.Request) -> web.Response:
        link = await self.link(request)
        body = await self.body(request, ("id", "ids", "timeout"))
        if "id" in body and "ids" in body:
            raise errors.bad_request("give id or ids, not both")
        timeout = seconds(body.pop("timeout", self.max_wait()), "timeout", self.max_wait())
        return answer(await link.call("wait", timeout, timeout=timeout, **body))

    async def list(self, request: web.Request) -> web.Response:
        """Newest first; `after`: only ids below it (the next page)."""
        params = query(request, ("state", "queue", "task", "limit", "after"))
        fields: dict[str, Any] = {k: params[k] for k in ("state", "queue", "task") if k in params}
        for name in ("limit", "after"):
            if name in params:
                fields[name] = whole(params[name], name)
        return answer(await (await self.link(request)).call("list", **fields))

    async def _one(self, request: web.Request, op: str) -> web.Response:
        """cancel or retry of one job, by the id in the path."""
        job_id = whole(request.match_info["id"], "the job id", 1)
        query(request, ())
        link = await self.link(request)
        await self.body(request, ())
        return answer(await link.call(op, id=job_id))

    async def _matching(self, request: web.Request, op: str) -> web.Response:
        """By filters (at least one; tq-host refuses none): state, task, queue, older_than (a duration)."""
        query(request, ())
        link = await self.link(request)
        body = await self.body(request, FILTERS)
        if "older_than" in body:
            body["older_than"] = seconds(body["older_than"], "older_than")
        return answer(await link.call(op, **body))

    # ---- queues, workers, tokens ------------------------------------------

    async def _steer(self, request: web.Request, op: str) -> web.Response:
        """pause or resume of the queue named in the path."""
        query(request, ())
        link = await self.link(request)
        await self.body(request, ())
        return answer(await link.call(op, queue=request.match_info["queue"]))

    async def forget_worker(self, request: web.Request) -> web.Response:
        query(request, ())
        link = await self.link(request)
        return answer(await link.call("forget_worker", instance=request.match_info["instance"]))

    async def token_create(self, request: web.Request) -> web.Response:
        query(request, ())
        link = await self.link(request)
        body = await self.body(request, ("name", "user", "read_only"))
        return answer(await link.call("token_create", **body), 201)

    async def token_revoke(self, request: web.Request) -> web.Response:
        query(request, ())
        return answer(await (await self.link(request)).call("token_revoke", name=request.match_info["name"]))

    async def whoami(self, request: web.Request) -> web.Response:
        """tq-host's whoami on the token's link: may_steer as the rules and groups are now (not when it acted), and
        a token revoked since is refused."""
        query(request, ())
        return answer(await (await self.link(request)).call("whoami"))

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text format 0.0.4; without a token only when `[gateway] metrics_public`."""
        query(request, ())
        # The snapshot from tq-host, the text written here: rendering it (the Prometheus client library's registry
        # and exposition) cost tq-host more than the snapshot itself, and the gateway has a core of its own. With
        # tq-host out of reach, `tq_up 0` (as tqctl metrics writes), answered 200: a scrape then tells "tq-host
        # down" from "gateway down". (A token is still needed, unless metrics_public; tq-host being down, it cannot
        # be checked, and this answer says nothing else.)
        try:
            if self.parts.settings.gateway().metrics_public:
                link = self.parts.links.own
            else:
                link = await self.link(request)
            snap = (await link.call("metrics")).get("metrics")
        except RequestError as e:
            if e.code != "unavailable":
                raise
            snap = None
        return web.Response(body=exposition.render(snap),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
