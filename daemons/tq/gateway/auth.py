"""Who is calling: the token of a request, and the tq-host link that acts as its user.

A token comes as `Authorization: Bearer TOKEN`, as the password of basic authentication (any user name: stock
XML-RPC clients can send nothing else), or in the `tq_token` cookie (the dashboard). tq-host checks it (act_as,
on the token's own connection); the gateway keeps no token list of its own. Two things spare tq-host a flood:
an address that had FAILURES tokens refused within WINDOW seconds is answered 429 for BLOCK seconds without
asking, and a refused token is remembered (by its hash, for REMEMBER seconds, with tq-host's reason) and refused
again at once, for that reason: the answer is the same as tq-host's was (it tells the token's holder nothing new).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections import OrderedDict, deque
from urllib.parse import urlsplit

from aiohttp import web

from ..control import RequestError
from .errors import TOO_MANY, Refusal
from .hostlink import HostLink, HostLinks, token_key

FAILURES, WINDOW, BLOCK = 20, 60.0, 60.0
REMEMBER = 30.0
ADDRESSES = 10_000  # addresses (and refused tokens) remembered at most: a bound on what a flood may cost
COOKIE = "tq_token"
TOKEN_KEY = "tq.token"  # where a request keeps its token (for the middleware: a revoked token's link goes)
MAX_TOKEN = 512  # longer is no token of tq's: refused without asking
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
PAGE_HEADER = "X-TQ-Page"  # the dashboard's requests carry it (see cross_site)
NOT_VALID = "the token is not valid (unknown or revoked)"  # a token the gateway refuses without asking tq-host


def token_of(request: web.Request) -> str | None:
    """The request's token, or None when it carries none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Refusal("unauthorized", "basic authentication that is not base64 of user:token") from None
        password = decoded.partition(":")[2]
        return password or None
    cookie = request.cookies.get(COOKIE)
    return cookie or None


def cross_site(request: web.Request) -> bool:
    """Whether a request that changes something may have been sent by another site's page: the browser adds the
    `tq_token` cookie to a form another site posts here (SameSite=Strict aside), but it sends no custom header
    without asking this gateway first (CORS, which it does not grant), and it says the page's Origin. So a POST,
    PUT or DELETE authenticated by the cookie must carry `X-TQ-Page: 1` (the dashboard sets it) or an Origin of
    this host."""
    if request.method in SAFE_METHODS or "Authorization" in request.headers:
        return False
    return request.headers.get(PAGE_HEADER) != "1" and not same_origin(request)


def same_origin(request: web.Request) -> bool:
    """The request's Origin is this gateway (as the Host header names it)."""
    origin = request.headers.get("Origin", "")
    return bool(origin) and urlsplit(origin).netloc == request.host


class Failures:
    """Tokens refused, counted by the address they came from. An address locked out is logged once (a warning,
    when it starts) and named by `locked_out` (STATUS=) while it lasts."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("tq.gateway")
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._refused: OrderedDict[str, tuple[float, str]] = OrderedDict()  # a token's hash -> until when, why
        self._locked: OrderedDict[str, float] = OrderedDict()  # an address locked out -> until when (about)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds the address is still refused (0: not)."""
        times = self._by_address.get(address)
        if times is None or len(times) < FAILURES:
            return 0.0
        return max(0.0, times[-1] + BLOCK - now)

    def note(self, address: str, key: str, now: float, reason: str = NOT_VALID) -> None:
        """A token (its hash: `key`) refused from `address`, for `reason`: counted, and remembered."""
        times = self._by_address.pop(address, None) or deque(maxlen=FAILURES)
        while times and times[0] < now - WINDOW:
            times.popleft()
        times.append(now)
        self._by_address[address] = times
        self._refused.pop(key, None)
        self._refused[key] = (now + REMEMBER, reason)
        if len(times) >= FAILURES and self._locked.get(address, 0.0) <= now:
            self._locked.pop(address, None)
            self._locked[address] = now + BLOCK
            self.logger.warning("too many refused tokens from %s (%d within %.0fs): every request from it is answered "
                                "429 for the next %.0fs (fix or stop the client that keeps failing)", address,
                                len(times), now - times[0], BLOCK)
        for table in (self._by_address, self._refused, self._locked):
            while len(table) > ADDRESSES:
                table.popitem(last=False)

    def refusal(self, key: str, now: float) -> str | None:
        """Why the token (its hash) was refused, while it is remembered; None when it is not."""
        until, reason = self._refused.get(key, (0.0, ""))
        return reason if now < until else None

    def locked_out(self, now: float) -> list[str]:
        """The addresses locked out now (oldest first)."""
        for address, until in list(self._locked.items()):
            if self.blocked_for(address, now) <= 0 and until <= now:
                del self._locked[address]
        return list(self._locked)


class Auth:
    def __init__(self, links: HostLinks, failures: Failures) -> None:
        self.links, self.failures = links, failures

    async def link(self, request: web.Request, token: str | None = None) -> HostLink:
        """The link that acts as the request's caller (or as `token`: the login form's), connected; Refusal (401,
        403, 429) or RequestError if none."""
        if token is None and request.cookies.get(COOKIE) and cross_site(request):
            raise Refusal("permission", "a request with the tq_token cookie must come from the dashboard "
                          f"({PAGE_HEADER}: 1, or an Origin of this host)")
        address = request.remote or "?"
        now = time.monotonic()
        wait = self.failures.blocked_for(address, now)
        if wait:
            after = math.ceil(wait)  # (the message and Retry-After say the same)
            raise Refusal("unauthorized", f"too many refused tokens from {address}: try again in {after}s",
                          TOO_MANY, {"Retry-After": str(after)})
        token = token_of(request) if token is None else token
        if token is None:
            raise Refusal("unauthorized", "no token: send Authorization: Bearer TOKEN (tqctl token create makes one)")
        key = token_key(token)
        reason = NOT_VALID if len(token) > MAX_TOKEN or not token.isprintable() else self.failures.refusal(key, now)
        if reason is not None:
            self.failures.note(address, key, now, reason)
            raise Refusal("unauthorized", reason)
        link = self.links.for_token(token)
        try:
            await link.connect()
        except RequestError as e:
            if e.code == "unauthorized":  # (permission: the gateway's own uid is not trusted; not the token's fault)
                self.refused(request, token, str(e))
            raise
        request[TOKEN_KEY] = token
        return link

    def refused(self, request: web.Request, token: str, reason: str) -> None:
        """tq-host refused the token (unknown, revoked since, its user gone or out of group tq ...), saying
        `reason`: its link goes, the address is counted, and the next request with it gets `reason` at once."""
        self.links.forget(token)
        self.failures.note(request.remote or "?", token_key(token), time.monotonic(), reason)
