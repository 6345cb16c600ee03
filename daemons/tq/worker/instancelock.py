"""One tq-worker process per instance name: an exclusive flock on a file beside the host's control socket.

Two processes under one instance name would read one inbox, and the host, which knows a worker by its name,
would take each one's hello for the other's restart: jobs ran twice and lost their attempts. The lock is
taken before the inbox is touched. It lives in `workers/` beside `host.socket` (/run/tq/workers under
systemd, made by tmpfiles.d and the one place under /run the worker unit may write: its tasks cannot touch the
socket; DIR/workers under `make run`), named after the worker's inbox (so configurations with other mailbox
prefixes do not collide). The kernel drops the lock when the process ends,
however it ends; the file stays (removing it would race with a process taking it).
"""

from __future__ import annotations

import fcntl
import os

from .. import config


class InstanceTaken(Exception):
    """Another live process holds this instance's lock, or the lock file cannot be opened."""


def lock_path(cfg: config.Config, instance: str) -> str:
    directory = os.path.join(os.path.dirname(os.path.abspath(cfg.host.socket)), "workers")
    return os.path.join(directory, cfg.inbox(instance).strip("/") + ".lock")


def take(cfg: config.Config, instance: str) -> int:
    """The descriptor holding the lock of `instance` (closed on exec: a re-executed worker takes it again)."""
    path = lock_path(cfg, instance)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    except OSError as e:
        raise InstanceTaken(f"cannot open the instance lock {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InstanceTaken(f"worker instance {instance} is already running (pid {holder}; it holds {path})") from None
    except OSError as e:
        os.close(fd)
        raise InstanceTaken(f"cannot lock {path}: {e.strerror or e}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
