"""The dashboard: `GET /` (the page, or the login form without a valid token), `POST /login`, `POST /logout`, its
static files (`/static/app.js`, `/static/style.css`, `/static/favicon.svg`) from gateway/static/, shipped in the
package (nothing is fetched from elsewhere, so it works offline), and `GET /api/v1/live`, the live summary.

The page is a shell; its data comes from /api/v1 as the caller's token (the `tq_token` cookie that /login sets,
HttpOnly, SameSite=Strict, Secure under TLS) and from the live summary (summary.py). Every answer here forbids
framing and any script, style or connection not from this gateway (Content-Security-Policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import time
import urllib.parse
from pathlib import Path

from aiohttp import web

from ..control import RequestError
from ..routes import API
from . import errors
from .api import query
from .app import Parts, read_body
from .auth import COOKIE, MAX_TOKEN, cross_site, same_origin, token_of
from .errors import Refusal
from .summary import END, Summary, frame

STATIC = Path(__file__).with_name("static")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
FORBIDDEN = 403
WRITE_TIMEOUT = 30.0  # a page that has not taken one summary in this long is dropped
RECHECK = 10.0  # seconds between checks that a live page's token is still valid
MESSAGE = "<!--message-->"  # where login.html takes its message
SECURITY = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}


class Asset:
    """A static file, read once, answered with an ETag (a browser revalidates it and gets 304 while unchanged)."""

    def __init__(self, path: Path, content_type: str) -> None:
        self.body = path.read_bytes()
        self.content_type = content_type
        self.etag = 'W/"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'  # (weak: also sent compressed)

    def response(self, request: web.Request) -> web.Response:
        headers = {**SECURITY, "Cache-Control": "no-cache", "ETag": self.etag}
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers=headers)
        resp = web.Response(body=self.body, content_type=self.content_type, headers=headers)
        resp.enable_compression()  # (gzip or deflate when the browser takes it: app.js goes as a third)
        return resp


class Page:
    def __init__(self, parts: Parts, summary: Summary) -> None:
        self.parts, self.summary = parts, summary
        self.assets = {name: Asset(STATIC / name, kind) for name, kind in ASSETS.items()}
        self.index_html = (STATIC / "index.html").read_bytes()
        self.login_html = (STATIC / "login.html").read_text()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.post("/login", self.login), web.post("/logout", self.logout),
                web.get("/login", self.home), web.get("/logout", self.home),
                web.get("/static/{name}", self.asset), web.get(f"{API}/live", self.live)]

    async def home(self, request: web.Request) -> web.Response:
        """GET /login or /logout (the address a refused login leaves in the browser, reloaded): to the page."""
        return web.Response(status=303, headers={"Location": "/", **SECURITY})

    async def asset(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return asset.response(request)

    async def index(self, request: web.Request) -> web.Response:
        """The page for a valid token; the login form otherwise (with why, when a token was refused)."""
        if token_of_or_none(request) is None:
            return self.form("")
        try:
            await self.parts.auth.link(request)
        except RequestError as e:
            resp = self.form(str(e), _status(e))
            if resp.status == FORBIDDEN:  # (the token is refused: forget it)
                resp.del_cookie(COOKIE, path="/")
            return resp
        return web.Response(body=self.index_html, content_type="text/html", charset="utf-8", headers=SECURITY)

    async def login(self, request: web.Request) -> web.Response:
        """Form field `token`: checked by tq-host first (act_as), then kept in the cookie; refused: the form again,
        with tq-host's reason (403; 429 after too many from one address; 503 when tq-host is down)."""
        if request.headers.get("Origin") and not same_origin(request):
            return self.form("a login must come from this gateway's own form", FORBIDDEN)
        token = form_token(await read_body(request, self.parts.settings.gateway().request_timeout))
        if not token or len(token) > MAX_TOKEN:
            return self.form("give a token (tqctl token create NAME --user USER prints one)", 400)
        try:
            await self.parts.auth.link(request, token)
        except RequestError as e:
            return self.form(str(e), _status(e))
        resp = web.Response(status=303, headers={"Location": "/", **SECURITY})
        secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"  # (TLS at a proxy)
        resp.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Strict", secure=secure)
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        if cross_site(request):
            return self.form("a logout must come from the dashboard", FORBIDDEN)
        resp = web.Response(status=303, headers={"Location": "/", **SECURITY})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The live summary (summary.py), one Server-Sent Event a second, as long as the page stays and its token
        is valid (asked again every RECHECK seconds: a revoked token's stream ends with `event: end`)."""
        query(request, ())
        link = await self.parts.auth.link(request)
        limit = self.parts.settings.gateway().max_subscribers
        if len(self.summary.slots) >= limit:
            raise Refusal("unavailable", f"{limit} live pages are open ([gateway] max_subscribers): try again later")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})  # (nginx: pass each event on at once)
        await resp.prepare(request)
        slot = self.summary.join()
        checked = time.monotonic()
        try:
            while (data := await slot.take()) != END:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(data)
                if time.monotonic() - checked > RECHECK:
                    checked = time.monotonic()
                    await link.call("ping")
        except RequestError as e:  # the page reads this and goes to the login form
            with contextlib.suppress(ConnectionError):
                await resp.write(b"event: end\n" + frame({"error": {"code": e.code, "message": str(e)}}))
            resp.force_close()  # (the connection closes with the stream, not request_timeout later)
        except (TimeoutError, ConnectionError):
            request.protocol.force_close()  # the page stopped reading, or went
        finally:
            self.summary.leave(slot)
        return resp

    def form(self, message: str, status: int = 200) -> web.Response:
        """The login form, with `message` (escaped) when there is one."""
        note = f'<p class="error" id="login-error">{html.escape(message[:300])}</p>' if message else ""
        return web.Response(text=self.login_html.replace(MESSAGE, note), content_type="text/html", status=status,
                            headers=SECURITY)


def form_token(body: bytes) -> str:
    """The login form's `token` field (application/x-www-form-urlencoded, as the form posts it); "" if the body is
    not such a form."""
    try:
        fields = urllib.parse.parse_qs(body.decode("ascii"), max_num_fields=10, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return ""
    return (fields.get("token") or [""])[0].strip()


def token_of_or_none(request: web.Request) -> str | None:
    """The request's token, or None (also for a malformed Authorization header: the form then says nothing)."""
    try:
        return token_of(request)
    except RequestError:
        return None


def _status(e: RequestError) -> int:
    """The login form's status for a refusal: 403 for a refused token (a 401 would make the browser ask for basic
    authentication), else the refusal's own (429, 503)."""
    status = e.status if isinstance(e, Refusal) else errors.http_status(e.code)
    return FORBIDDEN if status == errors.UNAUTHORIZED else status
