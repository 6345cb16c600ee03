"""Two workers under one name from two machines (machines of one short host name: cloned VMs, FQDNs whose first
label is equal). A worker's hello, heartbeats and fence answers carry its machine id (transport/machines.py); a
process of another machine under the name of a worker still present is a second worker, not a restart: tq-host
refuses it (the holder keeps its jobs) and tells it so, and it exits (worker/refusal.py)."""

from __future__ import annotations

import logging

from .. import protocol
from .workerstate import WorkerState

PRESENT = ("syncing", "live", "leaving")  # the states of a worker that holds its name


def elsewhere(w: WorkerState, machine: str) -> bool:
    """A message from another machine than the worker's (as far as both are known: a worker from before says
    none)."""
    return bool(machine and w.machine and machine != w.machine)


class NameClash:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def refuses(self, w: WorkerState, pid: int, machine: str, now: float, lease: float) -> bool:
        """Whether a hello or heartbeat of process `pid` on `machine` is refused: the name is held by a worker of
        another machine seen within `lease`. It is then told so, by pid and machine (both may read the name's
        inbox); the warning is logged once a process."""
        if not (elsewhere(w, machine) and w.state in PRESENT and now - w.seen <= lease):
            return False
        if w.refused != (pid, machine):
            w.refused = (pid, machine)
            self.logger.warning("worker %s: refused pid %d of machine %s: the name is held by pid %d of machine %s "
                                "(seen %.1fs ago); two machines give their workers the same name: set [transport] "
                                "machine on one", w.instance, pid, machine[:12], w.pid, w.machine[:12],
                                now - w.seen, extra={"TQ_WORKER": w.instance})
        reason = (f'another worker is named {w.instance} (pid {w.pid}, on another machine): give each machine its '
                  f'own name ([transport] machine = "...")')
        if w.inbox is not None:  # (full: the refused process's next heartbeat brings another)
            w.inbox.send(protocol.encode(protocol.Refused(pid, machine, reason)), protocol.CANCEL_PRIORITY)
        return True
