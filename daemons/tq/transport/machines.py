"""Worker names across machines. A worker that reaches tq-host through a broker carries its machine's short name
in its instance ("1@render-3"), so that tq-worker@1 on every machine is a different worker to tq-host; a worker
on tq-host's own machine (POSIX queues) has none. tq-host tells the two apart by the "@" alone."""

from __future__ import annotations

import re
import socket

MACHINE_MAX = 63  # a DNS label's length
# A worker's name as tq-host accepts it: the instance (systemd's %i), then "@" and the machine for a remote one.
WORKER_NAME_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,32}}(@[A-Za-z0-9_-]{{1,{MACHINE_MAX}}})?$")


def machine_instance(instance: str, machine: str | None = None) -> str:
    """A worker's instance name across machines: "1@render-3" (the machine's short name, this one's by default)."""
    name = (machine or socket.gethostname()).split(".")[0][:MACHINE_MAX] or "localhost"
    return f"{instance}@{''.join(c if c.isalnum() or c in '_-' else '-' for c in name)}"


def is_remote(instance: str) -> bool:
    """A worker that reaches tq-host through the broker (its name carries its machine's)."""
    return "@" in instance


def local_name(instance: str) -> str:
    """The instance on its own machine (systemd's %i): "1" of "1@render-3"."""
    return instance.partition("@")[0]


def machine_of(instance: str) -> str | None:
    """The machine in a remote worker's name; None for a worker on tq-host's machine."""
    return instance.partition("@")[2] or None
