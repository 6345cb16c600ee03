"""Reading [amqp] (tq-host's broker) and [transport] (how a worker reaches tq-host) into config.py's dataclasses.

A broker URL is `amqp://USER@HOST[:PORT][/VHOST]`; its password comes from `password_file` (a file holding it
on one line, read by the daemon when it opens the transport, so that the configuration may stay world-readable),
or, less safely, from the URL itself. No error repeats a URL as given: it may hold the password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from .config import TRANSPORT_KINDS, AmqpConfig, BrokerUrl, TransportConfig
from .configreader import Reader

URL_FORM = "amqp://USER@HOST[:PORT][/VHOST] (the value is not repeated here: it may hold a password)"
HOST_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}|[0-9A-Fa-f:.]{2,45}")


def amqp(r: Reader) -> AmqpConfig:
    r.check_keys({"url", "password_file", "queues", "heartbeat", "window"})
    d = AmqpConfig()
    url = broker_url(r)
    queues = r.names("queues", ()) if "queues" in r.table else ()
    if queues and url is None:
        raise r.error("queues", "needs amqp.url: the broker these queues' jobs go through")
    return AmqpConfig(url=url, queues=queues, heartbeat=r.duration("heartbeat", d.heartbeat, minimum=1.0),
                      window=r.integer("window", d.window, 1, 65535))


def transport(r: Reader, amqp: AmqpConfig) -> TransportConfig:
    r.check_keys({"kind", "url", "password_file"})
    kind = r.choice("kind", TRANSPORT_KINDS, TransportConfig.kind)
    url = broker_url(r) or amqp.url
    if kind == "amqp" and url is None:
        raise r.error("url", 'kind = "amqp" needs the broker: transport.url (or amqp.url), ' + URL_FORM)
    if kind == "posix" and ("url" in r.table or "password_file" in r.table):
        raise r.error("kind", 'url and password_file are for kind = "amqp"')
    return TransportConfig(kind=kind, url=url if kind == "amqp" else None)


def broker_url(r: Reader) -> BrokerUrl | None:
    """The table's `url` with its `password_file`; None without a url."""
    password_file: str = r.get("password_file", str, "")
    if password_file and not password_file.startswith("/"):
        raise r.error("password_file", f"expected an absolute path, got {password_file!r}")
    if "url" not in r.table:
        if password_file:
            raise r.error("password_file", "goes with url (the broker it logs in to)")
        return None
    raw = r.table["url"]
    if not isinstance(raw, str):
        raise r.error("url", f"expected a string, {URL_FORM}")
    try:
        parts = urlsplit(raw)
        port = parts.port or 5672
    except ValueError:
        raise r.error("url", f"expected {URL_FORM}") from None
    if parts.scheme == "amqps":
        raise r.error("url", "amqps (TLS) is not supported yet: use amqp:// on a trusted network or a tunnel")
    host = parts.hostname or ""
    if parts.scheme != "amqp" or not HOST_RE.fullmatch(host) or parts.query or parts.fragment:
        raise r.error("url", f"expected {URL_FORM}")
    if not parts.username:
        raise r.error("url", f"names no user: expected {URL_FORM}")
    password = unquote(parts.password or "")
    if password and password_file:
        raise r.error("password_file", "the url holds a password too: keep it in one place (the file)")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BrokerUrl(user=unquote(parts.username), host=host, port=port, vhost=vhost, password_file=password_file,
                     password=password)
