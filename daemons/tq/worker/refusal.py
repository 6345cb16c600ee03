"""tq-host's refusal of this process's name (host/nameclash.py): a worker of another machine holds it. The
Refused message goes to the name's inbox, which both processes may read: the one it names by pid and machine takes
it, the other ignores it. A refused worker finishes its job, hands back the others, sends no Bye (the fence it
would ask for is the other worker's) and exits with EXIT_REFUSED, which its unit does not restart."""

from __future__ import annotations

import logging
import os

from .. import protocol
from ..transport.machines import machine_id

EXIT_REFUSED = 78  # EX_CONFIG: the unit's RestartPreventExitStatus, no restart loop


class Refusal:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.reason = ""  # tq-host's words, once it refused this process its name

    def take(self, msg: protocol.Refused) -> bool:
        """Whether `msg` refuses this process (the first time): then the worker stops."""
        if msg.pid != os.getpid() or msg.machine != machine_id() or self.reason:
            return False
        self.reason = msg.reason
        self.logger.error("refused by tq-host: %s", msg.reason)
        return True
