"""Worker names across machines. A worker that reaches tq-host through a broker carries its machine's short name
in its instance ("1@render-3"), so that tq-worker@1 on every machine is a different worker to tq-host; a worker
on tq-host's own machine (POSIX queues) has none. tq-host tells the two apart by the "@" alone.

Two machines may share a short name (cloned VMs, FQDNs whose first label is equal): a worker also tells tq-host
its machine id (machine_id), so that tq-host refuses a second worker under a name held from another machine,
and `[transport] machine` names a machine otherwise."""

from __future__ import annotations

import functools
import re
import socket

MACHINE_MAX = 63  # a DNS label's length
MACHINE_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # `[transport] machine`: a DNS label
# Where the machine's identity is: systemd's, D-Bus's (older systems), else this boot's (one per machine too).
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id")
# A worker's name as tq-host accepts it: the instance (systemd's %i), then "@" and the machine for a remote one.
WORKER_NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,32}}(@[A-Za-z0-9_-]{{1,{MACHINE_MAX}}})?")


def machine_instance(instance: str, machine: str | None = None) -> str:
    """A worker's instance name across machines: "1@render-3" (the machine's short name, this one's by default)."""
    name = (machine or socket.gethostname()).split(".")[0][:MACHINE_MAX] or "localhost"
    return f"{instance}@{''.join(c if c.isalnum() or c in '_-' else '-' for c in name)}"


@functools.cache
def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str:
    """This machine's identity, the same for every process on it ("" if none can be read; read once): a worker's
    hello, heartbeats and fence answers carry it, and tq-host's refusal of a second worker under a name."""
    for path in files:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read(200).strip().replace("-", "")
        except OSError:
            continue
        if text:
            return text[:64]
    return ""


def is_remote(instance: str) -> bool:
    """A worker that reaches tq-host through the broker (its name carries its machine's)."""
    return "@" in instance


def local_name(instance: str) -> str:
    """The instance on its own machine (systemd's %i): "1" of "1@render-3"."""
    return instance.partition("@")[0]


def machine_of(instance: str) -> str | None:
    """The machine in a remote worker's name; None for a worker on tq-host's machine."""
    return instance.partition("@")[2] or None
