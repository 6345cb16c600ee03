#!/usr/bin/python3
"""Stand-in for tq-host / tq-worker / tq-gateway, installed in place of them by test_units.py.

It does, under the real units' sandbox, the system-level things tq does: open a
POSIX queue (mode 0660, depth and size as in the shipped config), write to the
state and runtime directories when it has them, and speak sd_notify with the
watchdog ping from its loop. Any failure exits 1 with the reason on stderr.

As tq-gateway it takes the listening socket systemd passes (LISTEN_FDS) instead
of a queue, and answers each connection with one line, not HTTP: its uid, its
groups and what it finds in /run/tq (the directory of tq-host's socket, which
group tq opens), or the error.
"""

import ctypes
import os
import select
import signal
import socket
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


def passed_socket() -> socket.socket:
    """The one socket systemd passed (sd_listen_fds(3)), read as the real tq-gateway reads it."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit(f"no socket passed: LISTEN_PID={os.environ.get('LISTEN_PID')} "
                         f"LISTEN_FDS={os.environ.get('LISTEN_FDS')}")
    return socket.socket(fileno=3)


def answer(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        try:
            found = " ".join(sorted(os.listdir("/run/tq")))
        except OSError as e:
            found = f"error {e.strerror}"
        groups = ",".join(str(g) for g in sorted(os.getgroups()))
        conn.sendall(f"uid={os.getuid()} groups={groups} run_tq={found}\n".encode())


def gateway(notifier: sdnotify.SystemdNotifier, stop: list[int]) -> int:
    listener = passed_socket()
    notifier.notify("READY=1\nSTATUS=probe gateway up")
    while not stop:
        notifier.notify("WATCHDOG=1")
        if select.select([listener], [], [], 1.0)[0]:
            answer(listener)
    notifier.notify("STOPPING=1")
    return 0


def main() -> int:
    role = os.path.basename(sys.argv[0])
    instance = sys.argv[-1] if role == "tq-worker" else "host"
    notifier = sdnotify.SystemdNotifier()
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    if role == "tq-gateway":
        return gateway(notifier, stop)
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
