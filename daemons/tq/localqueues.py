"""make run's POSIX message queues when it is stopped: which of a configuration's daemons still run, what its
queues hold of the user's RLIMIT_MSGQUEUE budget, and their removal (`make clean`).

The queues outlive the daemons on purpose (results in flight wait in them: the next `make run` carries on), and
are charged to the user until removed. Their names: the host mailbox, the inboxes of workers 1-4 (make run's)
and of every worker that took an instance lock in `workers/` beside the socket (its file is named after its
inbox). Run by scripts/run.sh and the Makefile as `python -m tq.localqueues held|running|remove CONFIG`
(`running`: whether a worker under one of make run's names, 1-4, still runs; `remove` refuses while any
daemon of the configuration runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys

import posix_ipc

from . import configload
from .config import Config, ConfigError
from .stderr import line
from .transport.posix import budget, mailbox_bytes, unlink_mailbox
from .worker.instancelock import lock_path

MAKE_RUN_WORKERS = ("1", "2", "3", "4")
STILL_RUNS = 3  # the exit status of `running` and `remove` while a daemon runs (1: Python's own, a traceback)


def _lock_dir(cfg: Config) -> str:
    return os.path.dirname(lock_path(cfg, "1"))


def queue_names(cfg: Config) -> list[str]:
    """The host mailbox, make run's workers' inboxes, and the inbox of each worker that left a lock file."""
    names = [cfg.host_queue, *(cfg.inbox(n) for n in MAKE_RUN_WORKERS)]
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(_lock_dir(cfg))):
            if entry.endswith(".lock") and "/" + entry[:-5] not in names:
                names.append("/" + entry[:-5])
    return names


def running_workers(cfg: Config, only: tuple[str, ...] | None = None) -> list[str]:
    """A line for each worker process that holds an instance lock of this configuration (it still runs), of the
    instances `only` names if given."""
    wanted = None if only is None else {cfg.inbox(n).strip("/") + ".lock" for n in only}
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(_lock_dir(cfg))):
            path = os.path.join(_lock_dir(cfg), entry)
            if entry.endswith(".lock") and (wanted is None or entry in wanted) and _held(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    pid = f.read(32).strip() or "unknown"
                found.append(f"tq-worker {entry[:-5].rsplit('.w.', 1)[-1]} still runs (pid {pid}; it holds {path})")
    return found


def _held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (closing drops a lock taken here)
    return False


def host_answers(cfg: Config) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(cfg.host.socket)
        except OSError:
            return False
    return True


def held_bytes(names: list[str]) -> tuple[int, int]:
    """How many of `names` exist, and what they cost of the budget."""
    count = total = 0
    for name in names:
        try:
            q = posix_ipc.MessageQueue(name)
        except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
            continue
        count, total = count + 1, total + mailbox_bytes(q.max_messages, q.max_message_size)
        q.close()
    return count, total


def remove(names: list[str]) -> tuple[int, int]:
    """Unlink the queues of `names` that exist: how many, and the bytes of budget they gave back."""
    count, total = held_bytes(names)
    for name in names:
        unlink_mailbox(name)
    return count, total


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("held", "running", "remove"):
        line("usage: python -m tq.localqueues held|running|remove CONFIG")
        return 2
    what, path = argv
    try:
        cfg = configload.load(path, default_required=True)
    except ConfigError as e:
        line(str(e))
        return 2
    if what == "held":
        count, total = held_bytes(queue_names(cfg))
        if count:
            print(f"its {count} queues ({cfg.mqueue.prefix}.*) stay for the next make run, holding {total:,} of "
                  f"your RLIMIT_MSGQUEUE's {budget()}: make clean removes them")
        return 0
    if what == "running":  # before make run: a worker by hand under one of its names would double it
        running = running_workers(cfg, MAKE_RUN_WORKERS)
    else:
        running = (["tq-host still runs (its socket answers)"] if host_answers(cfg) else []) + running_workers(cfg)
    for text in running:
        line(text)
    if running or what == "running":
        return STILL_RUNS if running else 0
    count, total = remove(queue_names(cfg))
    print(f"removed {count} queues ({cfg.mqueue.prefix}.*, {total:,} bytes of RLIMIT_MSGQUEUE)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
