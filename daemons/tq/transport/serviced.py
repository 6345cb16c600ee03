"""The loop's selector for a daemon whose transport has a connection of its own (a broker's).

A daemon's step selects, then runs the ready descriptors' callbacks. A broker connection also has timers
(heartbeats, connect timeouts, reconnects) and deferred callbacks (pika's, amqploop.py). `ServicedSelector` folds
them in: each select first runs what fell due since the last one (so after the last step's callbacks), then
waits no longer than the next one is due. A daemon without a broker gets the plain selector
(`transport.selector`): its step is the same code, at the same cost, as before brokers existed.
"""

from __future__ import annotations

import selectors
import time
from typing import Protocol


class Timed(Protocol):
    """What a connection's loop answers (amqploop.AmqpLoop)."""

    def timeout(self, now: float, longest: float | None = None) -> float | None:
        """Seconds a select may wait, at most `longest`."""
        ...

    def run_due(self, now: float) -> int:
        """Run what is due by `now`."""
        ...


class ServicedSelector(selectors.EpollSelector):
    """An epoll selector that runs its `timed` loops' due work at each select and bounds its wait by them."""

    def __init__(self) -> None:
        super().__init__()
        self.timed: list[Timed] = []

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        for loop in self.timed:
            loop.run_due(time.monotonic())
            timeout = loop.timeout(time.monotonic(), timeout)
        return super().select(timeout)
