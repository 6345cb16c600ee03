"""What a broker may do to a worker's deliveries: hand out again an attempt the worker took (a copy must not
run), or lose its inbox with what waited in it (the fence must find it).

A broker hands a message out again when it did not see its acknowledgement (lost with the connection, or with
the broker killed), so a worker through a broker may be given an attempt it already took: it must not run twice.
Past a fence tq-host assigns anew (after a power loss undid an assignment it sends the same attempt again, and
that one must run), and redelivered copies come before the fence, which has the lowest priority: the memory is
cleared at each fence. POSIX queues hand a message out once, and are not deleted under their reader, so a
worker on them has no Taken.
"""

from __future__ import annotations

KEPT = 4096  # (job, attempt) pairs remembered, the oldest forgotten first


class Taken:
    def __init__(self) -> None:
        self._pairs: dict[tuple[int, int], None] = {}  # insertion order: oldest first
        self._losses = 0  # the transport's count of queues deleted under this worker, as last seen

    def first(self, job_id: int, attempt: int) -> bool:
        """True the first time this attempt is taken (and remember it); False for a copy."""
        key = (job_id, attempt)
        if key in self._pairs:
            return False
        self._pairs[key] = None
        if len(self._pairs) > KEPT:
            del self._pairs[next(iter(self._pairs))]
        return True

    def clear(self) -> None:
        self._pairs.clear()

    def inbox_lost(self, losses: int) -> bool:
        """Whether the transport's count of deleted inboxes moved since the last call: the jobs that waited in
        the inbox are gone, and a hello has tq-host fence this worker."""
        lost, self._losses = losses != self._losses, losses
        return lost
