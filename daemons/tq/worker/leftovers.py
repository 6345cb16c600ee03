"""What a command job leaves behind: the processes still in its process group once its main process ended.

A command runs in a session and process group of its own (handlers.Command), whose id is its main process's pid.
When that process has ended, what is left in the group (`sh -c 'sleep 1000 &'`, a forgotten background child) is
stopped as a stopped attempt is: SIGTERM at once, SIGKILL after the task's kill_grace if any of it is still
there, and SIGKILL when the worker stops first. The common case, nothing left, costs one killpg that fails
(ESRCH). A process that left the group (setsid, a daemon that double-forks) escapes; under systemd, the unit's
control group catches it when the worker stops or restarts.

The kernel does not reuse a pid as long as a process group has that id, so a group is ours while we find it;
each heartbeat forgets the groups that emptied.
"""

from __future__ import annotations

import logging
import os
import signal

from .. import protocol


def _signal(group: int, signum: int) -> bool:
    """Send `signum` to process group `group`; False if no process is left in it."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group changed its user (setuid): not ours to stop
        return True
    return True


class Leftovers:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.groups: dict[int, float] = {}  # process group -> monotonic time at which what is left gets SIGKILL

    def ended(self, group: int, job: protocol.Job, grace: float, now: float) -> None:
        """The main process of `job`'s process `group` ended: SIGTERM to what is left of the group."""
        if not _signal(group, signal.SIGTERM):
            return  # nothing left: the common case
        self.logger.warning("job %d: stopping what it left running in its process group %d (SIGTERM; SIGKILL in "
                            "%gs, its kill_grace)", job.id, group, grace,
                            extra={"TQ_JOB_ID": job.id, "TQ_TASK": job.task, "TQ_ATTEMPT": job.attempt})
        self.groups[group] = now + grace

    def sweep(self, now: float) -> None:
        """At a heartbeat: SIGKILL the groups past their grace, forget those that emptied."""
        for group, kill_at in list(self.groups.items()):
            if not _signal(group, signal.SIGKILL if now >= kill_at else 0) or now >= kill_at:
                del self.groups[group]

    def kill_all(self) -> None:
        """The worker stops: SIGKILL every group still in its grace."""
        for group in self.groups:
            _signal(group, signal.SIGKILL)
        self.groups.clear()
