"""tq-gateway as a daemon: its listening sockets (systemd's, or `[gateway] listen`), TLS, the aiohttp runner,
signals, sd_notify and reload.

A signal handler only sets an event; `serve`'s loop step does the work: it pings the watchdog, sends STATUS=,
reloads on SIGHUP and stops on SIGTERM/SIGINT (aiohttp's runner cleanup then closes the connections).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import config, configload
from ..control import RequestError
from ..daemon import StartError
from ..notify import Notifier
from .api import Api
from .app import Parts, RouteTable, Settings, make_app
from .auth import Auth, Failures
from .hostlink import HostLinks
from .limits import GuardedSite, Limits
from .live import Hub, Live
from .page import Page
from .summary import Summary
from .xmlrpc import XmlRpc

LISTEN_FDS_START = 3  # systemd's first passed descriptor (sd_listen_fds(3))
PROBE_EVERY = 5.0  # seconds between the gateway's pings of tq-host (STATUS= says whether it answers)
RESTART_KEYS = ("listen", "tls_cert", "tls_key", "max_body")  # [gateway] keys that take effect at the next start


def activated_sockets() -> list[socket.socket]:
    """The sockets systemd passed (LISTEN_FDS, for this process: LISTEN_PID), or none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=LISTEN_FDS_START + i) for i in range(count)]


def bound_socket(listen: str) -> socket.socket:
    """A listening socket on `host:port` ("[::1]:8790"; an empty host: every address, IPv4 and IPv6)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        if not host:
            return socket.create_server(("", int(port)), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, int(port)), family=family, backlog=128)
    except OSError as e:
        raise StartError(f"cannot listen on {listen} ([gateway] listen): {e.strerror or e}") from None


class EncryptedKey(Exception):
    """The TLS key asks for a pass phrase."""


def _no_password() -> bytes:
    """load_cert_chain's password callback: a daemon has no one to ask (without it OpenSSL prompts on the
    terminal, and blocks there, or fails unclearly without one)."""
    raise EncryptedKey


def tls_context(cfg: config.GatewayConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=_no_password)
    except EncryptedKey:
        key = cfg.tls_key or cfg.tls_cert
        raise StartError(f"cannot load [gateway] tls_key {key}: the key is encrypted: tq-gateway needs an "
                         f"unencrypted key (openssl pkey -in {key} -out K2)") from None
    except (OSError, ssl.SSLError) as e:
        raise StartError(f"cannot load [gateway] tls_cert {cfg.tls_cert} and tls_key {cfg.tls_key}: {e}") from None
    return context


class MalformedRequests(logging.Filter):
    """aiohttp logs a traceback for each request it cannot parse (an unknown method, a bad header), which it has
    answered 400 already: a flood of them would be a flood of the journal. They are counted instead."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and (error.code or 400) < 500:
            self.count += 1
            return False
        return True


class Gateway:
    def __init__(self, cfg: config.Config, config_path: str | None, logger: logging.Logger) -> None:
        self.config_path, self.logger = config_path, logger
        self.settings = Settings(cfg)
        links = HostLinks(cfg.host.socket, cfg.gateway.host_connections, logger)
        self.parts = Parts(self.settings, links, Auth(links, Failures(logger)),
                           Limits(self.settings.gateway), logger)
        self.hub = Hub(self.parts)
        self.malformed = MalformedRequests()
        logging.getLogger("aiohttp.server").addFilter(self.malformed)
        self.summary = Summary(links, logger)
        self.notifier = Notifier()
        self.stop = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.host_up = False
        self.activated = False  # serving the sockets systemd passed (tq-gateway.socket): `listen` is not used

    def tables(self) -> list[RouteTable]:
        """The route tables the application serves."""
        return [Api(self.parts), Live(self.parts, self.hub), XmlRpc(self.parts), Page(self.parts, self.summary)]

    async def serve(self) -> int:
        cfg = self.settings.gateway()
        sockets = activated_sockets()
        self.activated = bool(sockets)
        if not sockets:
            sockets = [bound_socket(cfg.listen)]
        elif cfg.listen != config.GatewayConfig.listen:  # set, but not used: said once, not silently ignored
            self.logger.info("listening on the socket systemd passed (tq-gateway.socket): [gateway] listen = \"%s\" is "
                             "ignored (the addresses are the socket unit's ListenStream=)", cfg.listen)
        context = tls_context(cfg)
        runner = web.AppRunner(make_app(self.parts, self.tables()), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            for sock in sockets:
                site = GuardedSite(runner, sock, self.parts.limits, context)
                await site.start()
                self.logger.info("serving %s", site.name)
            self._watch_signals()
            await self._probe()
            self.notifier.ready(self.status_text())
            await self._loop()
        finally:
            self.notifier.stopping()
            self.hub.close()  # the event streams end, so that the runner's cleanup need not wait for them
            self.summary.close()
            self.parts.links.close()
            await runner.cleanup()
        return 0

    def _watch_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)

    async def _loop(self) -> None:
        next_probe = time.monotonic() + PROBE_EVERY
        while not self.stop.is_set():
            now = time.monotonic()
            ping = self.notifier.tick(now)
            timeout = min(x for x in (ping, next_probe - now, 1.0) if x is not None)
            wake = asyncio.ensure_future(self.reload_requested.wait())
            stop = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait((wake, stop), timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            stop.cancel()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + PROBE_EVERY
                await self._probe()
            self.notifier.status(self.status_text(), time.monotonic())

    async def _probe(self) -> None:
        """Whether tq-host answers the gateway's own link (STATUS= says it)."""
        try:
            await asyncio.wait_for(self.parts.links.own.call("ping"), PROBE_EVERY)
            up = True
        except (RequestError, TimeoutError):
            up = False
        if up != self.host_up:
            self.logger.log(logging.INFO if up else logging.WARNING, "tq-host is %s",
                            "reachable" if up else "not reachable")
        self.host_up = up

    def status_text(self) -> str:
        locked = self.parts.auth.failures.locked_out(time.monotonic())
        lockout = (f", {len(locked)} address(es) answered 429 for refused tokens ({', '.join(locked[:3])}"
                   f"{', ...' if len(locked) > 3 else ''})") if locked else ""
        return (f"{self.parts.limits.connections} connection(s), {len(self.hub.followers)} event stream(s), "
                f"{len(self.parts.links)} token(s) in use, {self.malformed.count} malformed request(s), "
                f"tq-host {'up' if self.host_up else 'not reachable'}{lockout}")

    def reload(self) -> None:
        """SIGHUP: read the configuration again; keys in RESTART_KEYS keep their running value (logged). One that
        does not load is logged and the running one kept, and STATUS= ends with "reload refused: FILE: KEY: reason"
        until a reload succeeds."""
        self.notifier.reloading()
        try:
            try:
                new = configload.load(self.config_path)
            except config.ConfigError as e:
                self.logger.error("reload refused, keeping the running configuration: %s", e)
                self.notifier.note = "reload refused: " + " ".join(str(e).split())
                return
            self.notifier.note = ""
            old = self.settings.cfg
            changed = _changed(old.gateway, new.gateway, RESTART_KEYS)
            if self.activated and "listen" in changed:  # (no restart would use it)
                changed.remove("listen")
                self.logger.warning("gateway.listen changed, but is not used: under socket activation the addresses "
                                    "are tq-gateway.socket's ListenStream= (a drop-in: systemctl edit "
                                    "tq-gateway.socket, then systemctl restart tq-gateway.socket)")
            if changed:
                self.logger.warning("gateway.%s changed: takes effect at the next restart", ", gateway.".join(changed))
            self.settings.cfg = new
            self.parts.links.reconfigure(new.host.socket, new.gateway.host_connections)
            logging.getLogger().setLevel(new.log.level.upper())
            self.logger.info("configuration reloaded from %s", ", ".join(new.files))
        finally:
            self.notifier.ready(self.status_text())


def _changed(old: config.GatewayConfig, new: config.GatewayConfig, keys: Iterable[str]) -> list[str]:
    return [k for k in keys if getattr(old, k) != getattr(new, k)]
