"""tq-host's checks at each step while it has workers through a broker: their leases while tq-host's own link to
the broker is down or not known alive (linkwatch.py), and a fence when the broker lost tq-host's queue
(carriage.py says which workers those are)."""

from __future__ import annotations

from ..transport import Mailboxes
from .carriage import remote_workers
from .fleet import Fleet
from .linkwatch import LinkClock
from .workerstate import WorkerState


class BrokerWatch:
    def __init__(self, mailboxes: Mailboxes, fleet: Fleet, link: LinkClock) -> None:
        self.mailboxes, self.fleet, self.link = mailboxes, fleet, link
        self.losses = 0  # the transport's count of queues deleted under tq-host, as last seen

    def check(self, now: float) -> None:
        """While tq-host's own connection to the broker is down, the remote workers' silence is not theirs
        (their leases start again when it is back); while it is up but not known alive (the broker silent past
        its heartbeat: linkwatch.py), that time is not counted either (their leases are extended by as much).
        A queue of tq-host's deleted on the broker has every remote worker fenced, since reports may have been
        lost with it."""
        unknown = self.link.advance(now)
        if self.mailboxes.waiting_for:
            for w in self._remote_workers():
                w.seen = now
        elif unknown:
            for w in self._remote_workers():
                w.seen = min(now, w.seen + unknown)
        if (losses := self.mailboxes.losses()) != self.losses:
            self.losses = losses
            cause = "tq-host's queue on the broker was deleted"
            for w in self._remote_workers():
                if w.state == "live":
                    self.fleet.fence(w, "syncing", cause, f"{cause}: checking that each of its jobs was reported")

    def _remote_workers(self) -> list[WorkerState]:
        return [self.fleet.workers[i] for i in remote_workers(list(self.fleet.workers))]


def link_state(mailboxes: Mailboxes, url: str) -> dict[str, str]:
    """Where tq-host's link to its broker stands, for `tqctl status`: connected, or what it waits for."""
    waiting = mailboxes.waiting_for
    return {"url": url, "state": "waiting", "detail": waiting} if waiting else {"url": url, "state": "connected"}
