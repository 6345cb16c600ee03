"""The worker's inbox, as deep as the transport grants."""

from __future__ import annotations

import logging
from dataclasses import replace

import posix_ipc

from .. import config, transport
from ..transport import Mailbox
from ..transport.posix import unlink_mailbox


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


def drop_posix_inbox(cfg: config.Config, instance: str, logger: logging.Logger) -> None:
    """Through a broker: remove this instance's POSIX inbox left from before the switch (the package starts
    tq-worker@1 on the POSIX mailboxes), which counts against user tq's RLIMIT_MSGQUEUE for nothing. Called with the
    instance's lock held: no process of this machine reads it (the transport is one for the whole machine)."""
    name = cfg.inbox(instance)
    try:
        removed = unlink_mailbox(name)
    except (OSError, posix_ipc.Error) as e:  # (another user's, or no mqueue support: nothing of ours to free)
        logger.debug("left POSIX mailbox %s: %s", name, e)
        return
    if removed:
        logger.info("removed POSIX mailbox %s, left from before this worker went through the broker (it counted "
                    "against this user's RLIMIT_MSGQUEUE)", name)
