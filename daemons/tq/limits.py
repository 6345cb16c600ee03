"""The kernel's POSIX queue limits, and what tq-host and the workers use of them.

A queue's depth and message size may not exceed `fs.mqueue.msg_max` and
`msgsize_max` (for a process without CAP_SYS_RESOURCE), and all the queues a
user owns share RLIMIT_MSGQUEUE bytes (819,200 by default). The package raises
the sysctls; where that cannot be done (a container whose /proc/sys is
read-only) the daemons start with what the kernel grants and say so once, and
a queue that does not fit the memory budget is made shallower.
"""

from __future__ import annotations

import os
import resource
import uuid
from dataclasses import dataclass
from pathlib import Path

import posix_ipc

MQ_PROC = Path("/proc/sys/fs/mqueue")
# The kernel charges each queue depth * (message size + its bookkeeping per message) against RLIMIT_MSGQUEUE
# (ipc/mqueue.c: a struct msg_msg and a share of the priority tree); measured in docs/performance.md.
PER_MESSAGE_OVERHEAD = 96
SYSCTL_FILE = "/usr/lib/sysctl.d/60-tq.conf"


def kernel_limits(depth_wanted: int = 1024, size_wanted: int = 65536) -> dict[str, int]:
    """msg_max, msgsize_max and queues_max from /proc/sys/fs/mqueue; where /proc/sys is hidden, msg_max and
    msgsize_max are found by trying small queues (created and removed at once), up to what is wanted."""
    limits = {}
    for name in ("msg_max", "msgsize_max", "queues_max"):
        try:
            limits[name] = int((MQ_PROC / name).read_text())
        except (OSError, ValueError):
            pass
    if "msg_max" not in limits and (found := _probe(True, depth_wanted)) is not None:
        limits["msg_max"] = found
    if "msgsize_max" not in limits and (found := _probe(False, size_wanted)) is not None:
        limits["msgsize_max"] = found
    return limits


def _fits(depth: int, size: int) -> bool | None:
    """Whether the kernel accepts a queue of these dimensions (None: it could not be told, e.g. no budget left)."""
    name = f"/tq-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600, max_messages=depth, max_message_size=size)
    except ValueError:
        return False
    except OSError as e:
        return False if e.errno == 22 else None  # EINVAL: over the limit; EMFILE, ENOSPC: the budget
    except posix_ipc.Error:
        return None
    q.unlink()
    q.close()
    return True


def _probe(depth: bool, ceiling: int) -> int | None:
    """The largest depth (or message size) up to `ceiling` that the kernel grants, by bisection; a queue that
    does not fit the memory budget counts as too large (it could not be had either)."""
    if _fits(1, 64) is not True:
        return None
    low, high = 1, ceiling
    while low < high:
        mid = (low + high + 1) // 2
        fits = _fits(mid, 64) if depth else _fits(1, mid)
        low, high = (mid, high) if fits else (low, mid - 1)
    return low


def queue_bytes(depth: int, size: int) -> int:
    """What a queue costs of its owner's RLIMIT_MSGQUEUE budget."""
    return depth * (size + PER_MESSAGE_OVERHEAD)


def budget() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


@dataclass(frozen=True)
class Granted:
    max_messages: int  # the depth to use for the host queue
    max_message_size: int
    msg_max: int  # the deepest queue the kernel grants (a worker's inbox)
    notes: tuple[str, ...]  # one line per limit below the configuration: the limit, the value used, the remedy


def grant(max_messages: int, max_message_size: int) -> Granted:
    """What the configured depth and message size become on this kernel."""
    limits = kernel_limits(max(max_messages, 1024), max_message_size)
    msg_max = limits.get("msg_max", max_messages)
    size_max = limits.get("msgsize_max", max_message_size)
    notes = []
    if max_messages > msg_max:
        notes.append(f"mqueue.max_messages = {max_messages} exceeds fs.mqueue.msg_max = {msg_max}: using {msg_max} "
                     f"(raise it: sysctl -w fs.mqueue.msg_max={max_messages}, as {SYSCTL_FILE} does where "
                     "/proc/sys is writable)")
    if max_message_size > size_max:
        notes.append(f"mqueue.max_message_size = {max_message_size} exceeds fs.mqueue.msgsize_max = {size_max}: "
                     f"using {size_max}; larger jobs are refused at submit (raise it: sysctl -w "
                     f"fs.mqueue.msgsize_max={max_message_size}, as {SYSCTL_FILE} does where /proc/sys is writable)")
    return Granted(min(max_messages, msg_max), min(max_message_size, size_max), max(msg_max, 1), tuple(notes))
