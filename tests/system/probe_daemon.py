#!/usr/bin/python3
"""Stand-in for tq-host / tq-worker, installed in place of them by test_units.py.

It does, under the real units' sandbox, the system-level things tq does: open a
POSIX queue (mode 0660, depth and size as in the shipped config), write to the
state and runtime directories when it has them, and speak sd_notify with the
watchdog ping from its loop. Any failure exits 1 with the reason on stderr.
"""

import ctypes
import os
import signal
import sys
import time

import sdnotify

O_RDWR, O_CREAT = 0o2, 0o100


class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]


def open_queue(name: str, depth: int, size: int) -> int:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    attr = MqAttr(0, depth, size, 0)
    fd: int = libc.mq_open(name.encode(), O_RDWR | O_CREAT, 0o660, ctypes.byref(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"mq_open {name}: {os.strerror(ctypes.get_errno())}")
    return fd


def main() -> int:
    role = os.path.basename(sys.argv[0])
    instance = sys.argv[-1] if role == "tq-worker" else "host"
    notifier = sdnotify.SystemdNotifier()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    # 16 deep, not 64: five 64 x 8 KiB queues exceed the default RLIMIT_MSGQUEUE
    # (800 KiB), and where systemd cannot raise it (no CAP_SYS_RESOURCE) the test
    # must still pass. 16 > 10 still needs the sysctl.d file applied.
    open_queue(f"/tq.probe.{instance}", 16, 8192)
    for variable in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        if variable in os.environ:
            with open(os.path.join(os.environ[variable], f"probe.{instance}"), "w") as out:
                out.write("ok\n")
    notifier.notify(f"READY=1\nSTATUS=probe {instance} up")
    interval = int(os.environ.get("WATCHDOG_USEC", "10000000")) / 2e6
    while not stop:
        notifier.notify("WATCHDOG=1")
        time.sleep(min(interval, 1.0))
    notifier.notify("STOPPING=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
