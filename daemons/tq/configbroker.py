"""Reading [amqp] (tq-host's broker) and [transport] (how a worker reaches tq-host) into config.py's dataclasses.

A broker URL is `amqp://USER@HOST[:PORT][/VHOST]`, or `amqps://` for TLS (port 5671 unless given); its password
comes from `password_file` (a file holding it on one line, read by the daemon at each connection attempt, so that
the configuration may stay world-readable), or, less safely, from the URL itself. With `amqps`, `ca_file`,
`cert_file` and `key_file` name the authority to trust and this side's certificate. No error repeats a URL as
given: it may hold the password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from .config import TRANSPORT_KINDS, AmqpConfig, BrokerUrl, TransportConfig
from .configreader import Reader
from .transport.machines import MACHINE_RE

URL_FORM = "amqp[s]://USER@HOST[:PORT][/VHOST] (the value is not repeated here: it may hold a password)"
TLS_FILES = ("ca_file", "cert_file", "key_file")  # with an amqps url
FILE_KEYS = ("password_file", *TLS_FILES)  # the table's keys besides url that a BrokerUrl holds
HOST_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}|[0-9A-Fa-f:.]{2,45}")


def amqp(r: Reader) -> AmqpConfig:
    r.check_keys({"url", "password_file", *TLS_FILES, "queues", "heartbeat", "window"})
    d = AmqpConfig()
    url = broker_url(r)
    queues = r.names("queues", ()) if "queues" in r.table else ()
    if queues and url is None:
        raise r.error("queues", "needs amqp.url: the broker these queues' jobs go through")
    return AmqpConfig(url=url, queues=queues, heartbeat=r.duration("heartbeat", d.heartbeat, minimum=1.0),
                      window=r.integer("window", d.window, 1, 65535))


def transport(r: Reader, amqp: AmqpConfig) -> TransportConfig:
    r.check_keys({"kind", "url", "password_file", *TLS_FILES, "machine"})
    kind = r.choice("kind", TRANSPORT_KINDS, TransportConfig.kind)
    url = broker_url(r) or amqp.url
    if kind == "amqp" and url is None:
        raise r.error("url", 'kind = "amqp" needs the broker: transport.url (or amqp.url), ' + URL_FORM)
    if kind == "posix" and (given := [k for k in ("url", "password_file", *TLS_FILES, "machine") if k in r.table]):
        raise r.error("kind", f'{", ".join(given)}: for kind = "amqp"')
    machine: str = r.get("machine", str, "")
    if "machine" in r.table and not MACHINE_RE.fullmatch(machine):
        raise r.error("machine", f"expected a DNS label (letters, digits and -, at most 63), got {machine[:80]!r}")
    return TransportConfig(kind=kind, url=url if kind == "amqp" else None, machine=machine)


def broker_url(r: Reader) -> BrokerUrl | None:
    """The table's `url` with its `password_file` and TLS files; None without a url."""
    files = {key: r.path(key, "", optional=True) for key in ("password_file", *TLS_FILES)}
    if "url" not in r.table:
        for key, path in files.items():
            if path:
                raise r.error(key, "goes with url (the broker it is for)")
        return None
    raw = r.table["url"]
    if not isinstance(raw, str):
        raise r.error("url", f"expected a string, {URL_FORM}")
    try:
        parts = urlsplit(raw)
        tls = parts.scheme == "amqps"
        port = parts.port or (5671 if tls else 5672)
    except ValueError:
        raise r.error("url", f"expected {URL_FORM}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("amqp", "amqps") or not HOST_RE.fullmatch(host) or parts.query or parts.fragment:
        raise r.error("url", f"expected {URL_FORM}")
    if not parts.username:
        raise r.error("url", f"names no user: expected {URL_FORM}")
    for key in TLS_FILES:
        if files[key] and not tls:
            raise r.error(key, "is for TLS: the url should be amqps://")
    if files["key_file"] and not files["cert_file"]:
        raise r.error("key_file", "goes with cert_file (the certificate it is the key of)")
    password = unquote(parts.password or "")
    if password and files["password_file"]:
        raise r.error("password_file", "the url holds a password too: keep it in one place (the file)")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BrokerUrl(user=unquote(parts.username), host=host, port=port, vhost=vhost,
                     password_file=files["password_file"], password=password, tls=tls, ca_file=files["ca_file"],
                     cert_file=files["cert_file"], key_file=files["key_file"])
