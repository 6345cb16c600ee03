"""Which transport carries which job queue's jobs, when tq-host has workers on other machines ([amqp] queues):
the queues of `amqp.queues` go through the broker, to remote workers only (named N@MACHINE); every other queue
stays on this machine's POSIX queues, for its own workers only. A worker's hello names the queues it serves; the
fleet keeps those its transport carries."""

from __future__ import annotations

import logging

from .. import config
from ..transport.machines import is_remote


def carried(cfg: config.Config, logger: logging.Logger, instance: str,
            queues: list[str]) -> tuple[list[str], list[str]]:
    """Of the queues a worker says it serves, those its transport carries and those it does not (one warning line
    each time a worker names one it will not get; `not_sent_why` says why)."""
    through_broker = cfg.amqp.queues
    if not through_broker:
        return queues, []
    remote = is_remote(instance)
    kept = [q for q in queues if (q in through_broker) == remote]
    left = [q for q in queues if q not in kept]
    if left:
        logger.warning("worker %s: queue(s) %s not served by it: %s", instance, ",".join(left),
                       not_sent_why(instance), extra={"TQ_WORKER": instance})
    return kept, left


def not_sent_why(instance: str) -> str:
    """Why tq-host sends a worker no jobs of a queue it serves (the setting to change is tq-host's)."""
    if is_remote(instance):
        return "a remote worker gets only the queues of tq-host's amqp.queues (add them there, on tq-host's machine)"
    return "their jobs go through the broker (tq-host's amqp.queues) to remote workers"


def remote_workers(instances: list[str]) -> list[str]:
    """The workers among these that come through the broker."""
    return [i for i in instances if is_remote(i)]
