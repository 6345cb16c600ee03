"""tq-host's start, and its recovery from a failed commit: every worker the store knows of is fenced before it gets
work (host/fleet.py's fence), since what it did while tq-host was down (or what the failed commit undid) is known
only from what it reports before the fence comes back."""

from __future__ import annotations

from .fleet import ROLLED_BACK_CAUSE, Fleet
from .openjobs import ON_WORKER
from .workerstate import WorkerState

RESTARTED = ("not reported after tq-host restarted", "tq-host restarted: every worker is checked before it gets work")
# After a failed commit, rolled back: what workers reported in that step is forgotten, so each is asked again.
ROLLED_BACK = (ROLLED_BACK_CAUSE,
               "a store write failed and was rolled back: every worker is checked again before it gets work")


def recover(fleet: Fleet, now: float, why: tuple[str, str] = RESTARTED) -> None:
    """Fence every worker the store knows of (and those whose hello a failed commit undid); `why`: the fence's
    cause and detail (see Fleet.fence)."""
    known = {w[0]: w for w in fleet.store.workers()}
    for job in fleet.jobs.jobs.values():
        if job.state in ON_WORKER and job.worker and job.worker not in known:
            known[job.worker] = (job.worker, 0, [], "syncing", 0.0)
    for w in fleet.workers.values():
        if w.instance not in known and w.state != "stopped":
            known[w.instance] = (w.instance, w.pid, w.queues, "syncing", 0.0)
    for instance, pid, queues, state, seen_at in known.values():
        w = fleet.workers.get(instance) or WorkerState(instance, pid=pid, queues=queues)
        fleet.workers[instance] = w
        w.assigned = fleet.jobs.running_on(instance)
        w.seen = now
        if state in ("stopped", "lost") and not w.assigned:  # (one that is back says so in its heartbeat)
            w.state, w.lost_at = state, seen_at if state == "lost" else 0.0
            continue
        fleet.reopen_inbox(w)
        fleet.fence(w, "leaving" if state == "leaving" else "syncing", *why)
