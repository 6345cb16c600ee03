"""Server-Sent Events of tq's event stream at GET /api/v1/events (Accept: text/event-stream), and the recent
events as JSON at the same path otherwise.

The gateway holds one subscription to tq-host however many clients follow (`Hub`): opened when the first client
comes, closed when the last goes, opened again (resuming after the last event seen) when tq-host comes back.
Each event is offered to each follower whose filters it matches, through the follower's own bounded queue: the
hub never waits for a client, and a client that falls behind is told `event: missed` with `{"missed": N}`. A
follower's replay (`recent=N`, `Last-Event-ID` or `after=T`) is tq-host's own, asked on a connection of its own
(a subscribe answered, then closed), so that the gaps tq-host knows of are told as it tells them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from .. import config, control
from ..control import RequestError
from ..events import Selection, as_dict
from ..routes import HOST_UNREACHABLE as UNREACHABLE
from . import errors
from .api import query, served, whole
from .app import Parts
from .auth import TOKEN_KEY
from .hostlink import HostLink

QUEUE_SIZE = 1000  # events waiting for one follower; past it they are counted as missed
PING = 15.0  # seconds between comment lines, so that proxies keep a quiet stream open
LOOK = 1.0  # seconds between looks whether a quiet stream's client is still there
BATCH = 500  # events written to a follower at once at most
WRITE_TIMEOUT = 30.0  # a follower that takes no bytes for this long is dropped
RETRY = 1.0  # seconds between attempts to subscribe again while tq-host is away
RECENT_MAX = 1000  # tq-host keeps the last 1000


Item = tuple[dict[str, Any], bytes]  # an event and its SSE frame (written once, however many followers get it)
END: Item = ({}, b"")  # the stream ends (the gateway stops)


@dataclass(eq=False)
class Follower:
    filter: Selection
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE + 2))
    missed: int = 0
    closed: bool = False

    def offer(self, event: dict[str, Any], frame: bytes) -> None:
        if self.queue.qsize() + (1 if self.missed else 0) >= QUEUE_SIZE:
            self.missed += 1
            return
        if self.missed:
            notice = {"missed": self.missed}
            self.queue.put_nowait((notice, _frame(notice)))
            self.missed = 0
        self.queue.put_nowait((event, frame))


class Hub:
    """The one subscription to tq-host, and the followers it feeds."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.followers: set[Follower] = set()
        self.task: asyncio.Task[None] | None = None
        # From when the subscription follows: the last event's time, or (none yet) when the first follower came.
        # Each subscription asks for the events after it, so that one made again after tq-host came back, on a
        # quiet stream too, is told those since and tq-host's notice of those it cannot know (it restarted).
        # (tq-host's clock is this machine's.)
        self.last_ts: float | None = None

    def join(self, follower: Follower) -> None:
        self.followers.add(follower)
        if self.task is None:
            self.last_ts = time.time()
            self.task = asyncio.get_running_loop().create_task(self._follow())

    def leave(self, follower: Follower) -> None:
        self.followers.discard(follower)
        if not self.followers and self.task is not None:
            self.task.cancel()
            self.task = None
            self.last_ts = None

    def close(self) -> None:
        for follower in list(self.followers):
            follower.closed = True
            follower.queue.put_nowait(END)  # (wakes its writer, which then ends; room is kept for it in offer)
        self.followers.clear()
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _follow(self) -> None:
        while self.followers:
            try:
                await self._subscription()
            except (OSError, ValueError, RequestError) as e:
                self.parts.logger.debug("event subscription lost: %s", e)
            await asyncio.sleep(RETRY)

    async def _subscription(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.parts.settings.cfg.host.socket,
                                                            limit=control.MAX_LINE)
        try:
            # As rows: tq-host then writes a flush's events as one line of lists, not a dict and a line each (a
            # sixth of its cost per event); the dicts are made here, where the CPU is the gateway's.
            # At most [gateway] events_per_second: what a drain's events cost tq-host grows with the events it sends
            # (not with the followers here), and a follower of the whole stream is a sample of it anyway.
            request: dict[str, Any] = {"op": "subscribe", "rid": 1, "format": "rows",
                                       "rate": self.parts.settings.gateway().events_per_second}
            # What tq-host has since the last event seen (or since the first follower came: a subscription made
            # again after tq-host came back), with its notice of what it cannot know (it restarted).
            request.update(after=self.last_ts, recent=RECENT_MAX)
            writer.write(control.encode(request))
            reply = control.decode(await reader.readline())
            if not reply.get("ok"):
                raise RequestError(str(reply.get("code")), str(reply.get("error")))
            for event in reply.get("events", []):
                self._fan_out(event)
            while line := await reader.readline():
                batch = control.decode(line)
                rows = batch.get("rows")
                if isinstance(rows, list):
                    for row in rows:
                        self._fan_out(as_dict(tuple(row)))
                else:
                    self._fan_out(batch)  # {"missed": N}
        finally:
            writer.close()

    def _fan_out(self, event: dict[str, Any]) -> None:
        gap = "missed" in event  # tq-host dropped some for the gateway: each follower may have missed them
        ts = event.get("ts")
        if isinstance(ts, (int, float)):
            self.last_ts = float(ts)
        frame = b""
        for follower in self.followers:
            if gap or follower.filter.shows(event):
                frame = frame or _frame(event)
                follower.offer(event, frame)


class Live:
    def __init__(self, parts: Parts, hub: Hub) -> None:
        self.parts, self.hub = parts, hub

    def routes(self) -> list[web.RouteDef]:
        return served({"events": (self.events,)})

    async def events(self, request: web.Request) -> web.StreamResponse:
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await self.stream(request)
        params = query(request, ("job", "task", "queue", "limit", "after"))
        f = _filter(params)
        fields: dict[str, Any] = f.fields() | ({"limit": whole(params["limit"], "limit")} if "limit" in params else {})
        if params.get("after"):
            fields["after"] = _after(params["after"])
        return web.json_response(await (await self.parts.auth.link(request)).call("events", **fields))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        params = query(request, ("job", "task", "queue", "recent", "after"))
        f = _filter(params)
        recent = min(whole(params.get("recent", "0"), "recent"), RECENT_MAX)
        after = _after(params.get("after") or request.headers.get("Last-Event-ID"))
        await self.parts.auth.link(request)  # who is calling: any valid token may follow
        if len(self.hub.followers) >= self.parts.settings.gateway().max_subscribers:
            raise errors.Refusal("unavailable", "tq-gateway follows as many event streams as it may "
                                 "([gateway] max_subscribers): try again later")
        follower = Follower(f)
        self.hub.join(follower)
        try:
            replay = await self._replay(f, recent, after) if recent or after is not None else []
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            try:
                await self._send(request, resp, follower, replay)
            except RequestError as e:  # the token was revoked: the stream ends, saying why (as /api/v1/live)
                if e.code == "unauthorized" and TOKEN_KEY in request:
                    self.parts.links.forget(request[TOKEN_KEY])
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await _write(resp, b"event: end\n" + _frame({"error": {"code": e.code, "message": str(e)}}))
                resp.force_close()  # (the connection closes with the stream, not request_timeout later)
            except (TimeoutError, ConnectionError):  # a client that takes nothing, or is gone: dropped
                request.protocol.force_close()
            return resp
        finally:
            self.hub.leave(follower)

    async def _replay(self, f: Selection, recent: int, after: float | None) -> list[dict[str, Any]]:
        """tq-host's replay for these filters: a subscribe on a connection of its own, closed once answered."""
        path = self.parts.settings.cfg.host.socket
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=control.MAX_LINE)
        except OSError as e:
            raise RequestError("unavailable", f"{UNREACHABLE} at {path}: {e.strerror or e}") from None
        try:
            request = {"op": "subscribe", "rid": 1, "recent": recent or RECENT_MAX, **f.fields()}
            if after is not None:
                request["after"] = after
            writer.write(control.encode(request))
            reply = control.decode(await reader.readline())
        finally:
            writer.close()
        if not reply.get("ok"):
            raise RequestError(str(reply.get("code")), str(reply.get("error")))
        return list(reply.get("events", []))

    async def _send(self, request: web.Request, resp: web.StreamResponse, follower: Follower,
                    replay: list[dict[str, Any]]) -> None:
        """The replay, then the follower's events as they come, each batch once its token is known valid still
        (HostLink.check: a token revoked ends the stream with RequestError before an event after it goes out).
        The token's link is taken from the pool at each check: one the pool closed meanwhile is not kept open."""
        link = partial(self.parts.links.for_token, request[TOKEN_KEY])
        loop = asyncio.get_running_loop()
        last = max((e["ts"] for e in replay if isinstance(e.get("ts"), (int, float))), default=None)
        seen = {json.dumps(e, sort_keys=True) for e in replay if e.get("ts") == last}
        await _write(resp, b"".join(_frame(e) for e in replay) or b": ok\n\n")
        quiet = 0.0
        while not follower.closed and request.transport is not None:  # (aiohttp 3.8 leaves a gone client's
            try:                                                         # handler running: look every second)
                items = [await asyncio.wait_for(follower.queue.get(), LOOK)]
            except TimeoutError:
                quiet += LOOK
                if quiet >= PING:
                    await _checked(link, loop.time(), resp)  # (a quiet stream's revoked token ends it too)
                    await _write(resp, b": ping\n\n")
                    quiet = 0.0
                continue
            while not follower.queue.empty() and len(items) < BATCH:  # what waits goes out in one write
                items.append(follower.queue.get_nowait())
            if END in items:
                return
            await _checked(link, loop.time(), resp)
            if last is not None:
                items = [(e, f) for e, f in items if not _replayed(e, last, seen)]
            await _write(resp, b"".join(f for _, f in items))


async def _checked(link: Callable[[], HostLink], since: float, resp: web.StreamResponse) -> None:
    """link.check, waiting out tq-host's absence (a restart; a comment line to the client each try, so that it
    knows the stream is open): only a refusal of the token ends the stream."""
    while True:
        try:
            return await link().check(since)
        except RequestError as e:
            if e.code != "unavailable":
                raise
        await asyncio.sleep(RETRY)
        await _write(resp, b": ping\n\n")


def _replayed(event: dict[str, Any], last: float, seen: set[str]) -> bool:
    """Whether the replay, whose last event was at `last`, told this event already."""
    ts = event.get("ts")
    return isinstance(ts, (int, float)) and (ts < last or (ts == last and json.dumps(event, sort_keys=True) in seen))


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT):
        await resp.write(data)


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    if "missed" in event:
        return f"event: missed\ndata: {data}\n\n".encode()
    return f"id: {event.get('ts', '')}\ndata: {data}\n\n".encode()


def _filter(params: dict[str, str]) -> Selection:
    """The stream's filters, refused as tq-host refuses them (a task or queue name no job can have)."""
    job = whole(params["job"], "job", 1) if "job" in params else None
    task, queue = params.get("task") or None, params.get("queue") or None
    if task is not None and (problem := config.task_name_problem(task)) is not None:
        raise errors.bad_request(f"task filter: {problem}")
    if queue is not None and not config.NAME_RE.fullmatch(queue):
        raise errors.bad_request(f"invalid queue name {queue[:60]!r}")
    return Selection(job, task, queue)


def _after(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        if not value.isascii() or "_" in value:  # (float() takes other scripts' digits, ٣, and "1_0")
            raise ValueError(value)
        after = float(value)
    except ValueError:
        raise errors.bad_request(f"after (or Last-Event-ID) must be an event's time, not {value[:40]!r}") from None
    if not after >= 0 or after == float("inf"):
        raise errors.bad_request("after must be a time in seconds since the epoch")
    return after

