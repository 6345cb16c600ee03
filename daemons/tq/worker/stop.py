"""How a worker stops (SIGTERM), as its loop steps see it: when the stop began, whether the Bye went, when to exit.

A stopping worker finishes the running job (up to its stop_timeout: runner.py stops it after that), hands back
the jobs it holds and says Bye; tq-host requeues them and fences the worker with a Sync, on which it exits, or
after BYE_WAIT when tq-host does not answer. A worker tq-host refused its name (refusal.py) sends no Bye (the fence
it would ask for is the other worker's): it hands back what it holds and exits at once.
"""

from __future__ import annotations

import logging
import os

from .. import protocol
from ..notify import Notifier
from .outbox import Outbox
from .refusal import Refusal

BYE_WAIT = 5.0  # seconds a stopping worker waits for the host's fence before it exits anyway


class Stop:
    def __init__(self, instance: str, outbox: Outbox, refusal: Refusal, notifier: Notifier,
                 logger: logging.Logger) -> None:
        self.instance, self.outbox, self.refusal = instance, outbox, refusal
        self.notifier, self.logger = notifier, logger
        self.started = 0.0  # monotonic time the stop began (0: not stopping)
        self.bye_at = 0.0  # monotonic time the Bye was sent (0: not sent)

    def step(self, now: float, running: bool, stop_timeout: float) -> bool:
        """At each loop step once a stop was asked for: whether the worker exits now (a refused worker hands back
        what it holds first). `running`: a job still runs (it is finished, or handed back, first)."""
        if not self.started:
            self.started = now
            self.notifier.stopping()
            if not self.refusal.reason:
                self.logger.info("stopping: finishing the current job (up to %gs), then handing back queued ones",
                                 stop_timeout)
        if running:
            return False
        if self.refusal.reason:
            return True
        if not self.bye_at:
            self.bye_at = now
            self.outbox.message(protocol.Bye(self.instance, os.getpid()))
        elif now - self.bye_at > BYE_WAIT:
            self.logger.warning("tq-host did not answer within %gs; exiting (it requeues what this worker held)",
                                BYE_WAIT)
            return True
        return False
