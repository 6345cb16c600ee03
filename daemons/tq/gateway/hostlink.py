"""The gateway's connections to tq-host: control.py's framing over its Unix socket, many requests in flight on one.

A `HostLink` is one connection, multiplexed by `rid`: each request gets the next rid and a future, and the
reader task matches each reply line to its future (a submit with `wait_for` is answered twice). A link made for
a token sends `{"op": "act_as"}` first; tq-host then treats every request on it as the token's user's. When the
host goes, the requests in flight fail as `unavailable` and the next request connects again.

`HostLinks` keeps one link per token in use, at most `[gateway] host_connections` (least recently used idle ones
closed first), keyed by the token's SHA-256 (the token itself is not kept as a key).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any

from .. import control
from ..control import RequestError
from ..routes import HOST_UNREACHABLE as UNREACHABLE

SLACK = 30.0  # seconds a reply may take beyond the request's own wait before the link is given up as hung


class HostLink:
    """One connection to tq-host; `call` may be awaited by many tasks at once."""

    def __init__(self, path: str, token: str | None, logger: logging.Logger) -> None:
        self.path, self.token, self.logger = path, token, logger
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, list[asyncio.Future[dict[str, Any]]]] = {}
        self._rid = 0
        self._connecting = asyncio.Lock()
        self._check: tuple[float, asyncio.Future[dict[str, Any]]] | None = None  # the last ping: sent when, reply

    async def check(self, since: float) -> None:
        """The token is still valid at a moment after `since` (the loop's clock): a ping sent at or after it was
        answered. An event seen before `since` may then go to the token's follower: tq-host handles requests in
        order, so a revocation before the event refuses this ping. Callers at once share one ping; a refused
        token raises RequestError (unauthorized)."""
        check = self._check
        failed = check is not None and check[1].done() and (check[1].cancelled() or check[1].exception() is not None)
        if check is None or check[0] < since or failed:
            loop = asyncio.get_running_loop()
            check = self._check = (loop.time(), asyncio.ensure_future(self.call("ping")))
        await asyncio.shield(check[1])

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    async def call(self, op: str, wait: float = 0.0, **fields: Any) -> dict[str, Any]:
        """One request's reply (without `ok` and `rid`); a refusal raises RequestError with tq's code."""
        (reply,) = await self.call_many(op, 1, wait, **fields)
        return reply

    async def call_many(self, op: str, replies: int, wait: float = 0.0, **fields: Any) -> list[dict[str, Any]]:
        """A request answered `replies` times (a submit with `wait_for`: the ids, then the job). A refusal in any
        raises RequestError; `wait` is how long the host may rightly take."""
        await self.connect()
        return await self._request(op, replies, wait, fields)

    async def _request(self, op: str, replies: int, wait: float, fields: dict[str, Any]) -> list[dict[str, Any]]:
        writer = self._writer
        if writer is None:
            raise RequestError("unavailable", UNREACHABLE)
        self._rid += 1
        rid = self._rid
        try:  # (checked before it goes: tq-host would refuse a NaN or infinity, a line it cannot read, by no rid)
            line = control.encode_finite({"op": op, "rid": rid, **{k: v for k, v in fields.items() if v is not None}})
        except control.Unfit as e:
            raise RequestError("bad_request", str(e)) from None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._pending[rid] = list(futures)
        try:
            writer.write(line)
            try:
                await writer.drain()  # (a host slow to read holds the callers, not the gateway's memory)
            except OSError as e:
                self._lost(str(e))
            out = []
            for future in futures:  # a refusal is the last reply: raised at once (_body)
                try:
                    out.append(_body(await asyncio.wait_for(future, wait + SLACK)))
                except TimeoutError:
                    self._lost("it did not answer in time")
                    raise RequestError("unavailable", f"{UNREACHABLE}: it did not answer in time") from None
            return out
        finally:
            self._pending.pop(rid, None)

    async def connect(self) -> None:
        """Connect (and act_as the token) unless connected; a refused token raises RequestError (unauthorized)."""
        if self._writer is not None:
            return
        async with self._connecting:
            if self._writer is not None:
                return
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=control.MAX_LINE)
            except OSError as e:
                raise RequestError("unavailable", f"{UNREACHABLE} at {self.path}: {e.strerror or e}") from None
            self._reader, self._writer = reader, writer
            self._task = asyncio.get_running_loop().create_task(self._read(reader))
            if self.token is not None:
                try:
                    await self._request("act_as", 1, 0.0, {"token": self.token})
                except RequestError:
                    self.close()
                    raise

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "it closed the connection"
        try:
            while line := await reader.readline():
                self._answer(control.decode(line))
        except (OSError, ValueError, RequestError) as e:
            reason = str(e)
        self._lost(reason)

    def _answer(self, reply: dict[str, Any]) -> None:
        rid = reply.get("rid")
        if rid is None and reply.get("ok") is False:  # a line tq-host could not read: whose, no reply says
            self.logger.warning("tq-host refused a request it could not read: %.200s", reply.get("error"))
            self._lost(f"it could not read a request: {str(reply.get('error'))[:200]}")
            return
        futures = self._pending.get(rid) if isinstance(rid, int) else None
        if not futures:
            return  # a reply to a request whose caller has gone
        future = futures.pop(0)
        if not futures:
            del self._pending[rid]  # type: ignore[arg-type]  # (an int: looked up above)
        if not future.done():
            future.set_result(reply)

    def _lost(self, reason: str) -> None:
        """The connection is gone: every request in flight fails as unavailable; the next one reconnects."""
        if self._writer is not None:
            self.logger.debug("connection to tq-host lost: %s", reason)
        self.close(reason)

    def close(self, reason: str = "the gateway closed the connection") -> None:
        writer, task = self._writer, self._task
        self._reader = self._writer = self._task = None
        if writer is not None:
            writer.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for futures in self._pending.values():
            for future in futures:
                if not future.done():
                    future.set_exception(RequestError("unavailable", f"{UNREACHABLE}: {reason}"))
        self._pending.clear()


def _body(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        code = str(reply.get("code", "internal"))
        raise RequestError(code if code in control.ERRORS else "internal", str(reply.get("error", code)))
    return {k: v for k, v in reply.items() if k not in ("ok", "rid")}


def token_key(token: str) -> str:
    """What the pool and the refusal counts know a token by."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class HostLinks:
    """The links in use: the gateway's own (no token: /metrics when public, the event subscription's requests)
    and one per token, bounded."""

    def __init__(self, path: str, size: int, logger: logging.Logger) -> None:
        self.path, self.size, self.logger = path, size, logger
        self.own = HostLink(path, None, logger)
        self._links: OrderedDict[str, HostLink] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def for_token(self, token: str) -> HostLink:
        """The token's link (made on first use; act_as is sent when it connects)."""
        key = token_key(token)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = HostLink(self.path, token, self.logger)
            self._trim()
        else:
            self._links.move_to_end(key)
        return link

    def forget(self, token: str) -> None:
        """Drop a token's link (tq-host refused the token)."""
        link = self._links.pop(token_key(token), None)
        if link is not None:
            link.close()

    def _trim(self) -> None:
        for key in list(self._links):
            if len(self._links) <= self.size:
                return
            if not self._links[key].busy:
                self._links.pop(key).close()

    def reconfigure(self, path: str, size: int) -> None:
        """A reloaded configuration: a new socket path closes every link (each reconnects at its next use)."""
        if path != self.path:
            self.close()
            self.path, self.own = path, HostLink(path, None, self.logger)
        self.size = size
        self._trim()

    def close(self) -> None:
        self.own.close()
        for link in self._links.values():
            link.close()
        self._links.clear()
