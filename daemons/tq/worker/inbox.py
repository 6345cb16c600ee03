"""The worker's inbox, as deep as the transport grants."""

from __future__ import annotations

import logging
from dataclasses import replace

from .. import config, transport
from ..transport import Mailbox


def open_inbox(mailboxes: transport.Mailboxes, instance: str, wcfg: config.WorkerConfig,
               logger: logging.Logger) -> tuple[Mailbox, config.WorkerConfig]:
    """The inbox of `instance`, and `wcfg` with the prefetch it holds.

    The inbox holds at most `prefetch` jobs and the host's Sync fence: a deeper one would only use up the per-user
    queue memory (POSIX: RLIMIT_MSGQUEUE). Where the kernel or that budget grants less, less.
    """
    drained: list[bytes] = []
    inbox = mailboxes.create_inbox(instance, wcfg.prefetch + 1, drained)
    if inbox.max_messages < wcfg.prefetch + 1:
        logger.warning("inbox %s holds %d messages, not worker.prefetch + 1 = %d (%s): prefetch %d",
                       inbox.name, inbox.max_messages, wcfg.prefetch + 1, mailboxes.depth_bounds(),
                       inbox.max_messages - 1)
        wcfg = replace(wcfg, prefetch=inbox.max_messages - 1)
    if drained:
        logger.warning("recreated inbox %s with the configured size; dropped %d message(s), which tq-host requeues",
                       inbox.name, len(drained))
    return inbox, wcfg
