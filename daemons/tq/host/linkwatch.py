"""Whether tq-host's link to the broker is known to be alive: the time a remote worker's silence may count.

A remote worker's messages reach tq-host through the broker. A connection that dies without a close (a frozen
broker, a cut cable on tq-host's side) is noticed by the AMQP heartbeat only after about 2 heartbeats; until
then tq-host hears nothing from anyone, and cannot tell a worker's silence from its own link's. The link is
known alive while the broker is heard from (any frame: the transport's `heard` count changes); the broker sends
a heartbeat each `amqp.heartbeat / 2` seconds when it has nothing else to send, so an idle, healthy link is
heard at least that often. Past that and a margin of silence (the `grace`, config.AmqpConfig.link_grace; `tqctl
config check` warns of a host.lease no longer than it), the link is not known alive: that time is not counted
against a remote worker's lease (brokerwatch.py moves its last-heard time forward by as much).
"""

from __future__ import annotations

from collections.abc import Callable


class LinkClock:
    """Time during which the link was not known alive, as `advance` is called at each of tq-host's steps."""

    def __init__(self, heard: Callable[[], int], grace: float, now: float) -> None:
        self.heard, self.grace = heard, grace
        self.count = heard()
        self.last_heard = self.checked = now

    def advance(self, now: float) -> float:
        """Seconds since the previous call during which the link was not known alive (0 while it is)."""
        count = self.heard()
        if count != self.count:
            self.count, self.last_heard = count, now
        unknown_from = max(self.checked, self.last_heard + self.grace)
        self.checked = now
        return max(0.0, now - unknown_from)

    def silent_for(self, now: float) -> float:
        """Seconds since the broker was last heard from (as of the last `advance`)."""
        return now - self.last_heard
