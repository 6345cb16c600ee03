"""A broker connection's parameters from the configured URL: the password (read from its file) and, for `amqps`,
the TLS context.

They are made at each connection attempt (`BrokerParameters`, which the session calls), so that the files are read
then: a password rotated in its file is used from the next connection (a reload says so when it changed), and a
file that cannot be read fails that attempt in one line (MailboxError: the log and STATUS say it, as a refused
login does, and the session retries with its backoff): never a start error, so tq-host serves this machine's
queues meanwhile. The host's name is looked up at each connection attempt too (amqploop.Resolver): a name that
does not resolve yet, or no longer, is a wait like a broker that is down.
"""

from __future__ import annotations

import ssl

import pika

from .. import config
from .mailbox import MailboxError


class BrokerParameters:
    """pika's parameters for one connection attempt (see the module's docstring); `password` is the one last read."""

    def __init__(self, url: config.BrokerUrl, heartbeat: int, connection_name: str) -> None:
        self.url, self.heartbeat, self.connection_name = url, heartbeat, connection_name
        self.password: str | None = None

    def __call__(self) -> pika.ConnectionParameters:
        """Read the password and TLS files now; MailboxError (one line) when one cannot be read."""
        password = read_password(self.url)
        params = parameters(self.url, password, self.heartbeat, self.connection_name)
        self.password = password
        return params

    def password_changed(self) -> bool:
        """(A reload) whether `password_file` now holds another password than the one last used: the next
        connection uses it. False when it cannot be read (the next attempt says why) or none was read yet."""
        if not self.url.password_file or self.password is None:
            return False
        try:
            return read_password(self.url) != self.password
        except MailboxError:
            return False


def parameters(url: config.BrokerUrl, password: str, heartbeat: int,
               connection_name: str) -> pika.ConnectionParameters:
    """pika's parameters for `url`: one attempt (the session retries with its own backoff), a 5 s socket timeout."""
    credentials = pika.PlainCredentials(url.user, password, erase_on_connect=False)
    return pika.ConnectionParameters(
        host=url.host, port=url.port, virtual_host=url.vhost, credentials=credentials, heartbeat=heartbeat,
        connection_attempts=1, socket_timeout=5.0, ssl_options=tls(url),
        client_properties={"connection_name": connection_name})


def read_password(url: config.BrokerUrl) -> str:
    """The password: the first line of `password_file`, or the URL's own."""
    if not url.password_file:
        return url.password
    try:
        with open(url.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise MailboxError(f"cannot read the broker's password from {url.password_file}: {reason(e)}") from None
    if not password:
        raise MailboxError(f"{url.password_file} is empty: it should hold the broker's password on one line")
    return password


def tls(url: config.BrokerUrl) -> pika.SSLOptions | None:
    """For `amqps`: a context that verifies the broker's certificate (against `ca_file`, else the system's
    authorities) and that it names the URL's host, with this
    side's certificate when `cert_file` is set. None for `amqp`."""
    if not url.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=url.ca_file or None)
    except (OSError, ssl.SSLError) as e:
        raise MailboxError(f"cannot load the broker's certificate authority from {url.ca_file}: {reason(e)}") \
            from None
    if url.cert_file:
        try:  # (password "": an encrypted key is refused here, not asked for on a terminal)
            context.load_cert_chain(url.cert_file, url.key_file or None, password="")
        except (OSError, ssl.SSLError) as e:
            files = url.cert_file + (f" and {url.key_file}" if url.key_file else "")
            raise MailboxError(f"cannot load this side's certificate and key from {files}: {reason(e)}") from None
    return pika.SSLOptions(context, server_hostname=url.host)


def reason(e: BaseException) -> str:
    """An error's words without its errno and path (the message names the file)."""
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e).replace("_", " ").lower()
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)
