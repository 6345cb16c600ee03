"""Which transport carries which job queue's jobs, when tq-host has workers on other machines ([amqp] queues):
the queues of `amqp.queues` go through the broker, to remote workers only (named N@MACHINE); every other queue
stays on this machine's POSIX queues, for its own workers only. A worker's hello names the queues it serves; the
fleet keeps those its transport carries."""

from __future__ import annotations

import logging

from .. import config
from ..transport.machines import is_remote


def carried(cfg: config.Config, logger: logging.Logger, instance: str, queues: list[str]) -> list[str]:
    """Of the queues a worker says it serves, those its transport carries (one warning line each time a worker
    names one it will not get)."""
    through_broker = cfg.amqp.queues
    if not through_broker:
        return queues
    remote = is_remote(instance)
    kept = [q for q in queues if (q in through_broker) == remote]
    if kept != queues:
        logger.warning("worker %s: queue(s) %s not served by it: %s", instance,
                       ",".join(q for q in queues if q not in kept),
                       "a remote worker gets only the queues of amqp.queues" if remote else
                       "their jobs go through the broker (amqp.queues) to remote workers",
                       extra={"TQ_WORKER": instance})
    return kept


def remote_workers(instances: list[str]) -> list[str]:
    """The workers among these that come through the broker."""
    return [i for i in instances if is_remote(i)]
