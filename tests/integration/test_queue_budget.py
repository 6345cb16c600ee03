"""A daemon whose RLIMIT_MSGQUEUE has no room for its mailbox: one line that fits where it runs (by hand here: no
word of a unit's LimitMSGQUEUE=), naming this user's queues that hold the budget where /dev/mqueue shows them."""

from __future__ import annotations

import os
import re

from harness import Daemon, Suite


def test_a_worker_out_of_queue_memory_by_hand_names_what_holds_it(suite: Suite) -> None:
    suite.host()  # its mailbox: one queue of this user's at least
    env = {k: v for k, v in suite.env.items() if k != "INVOCATION_ID"}  # not a systemd unit
    # a budget of 1 byte, soft and hard: no queue fits, whatever this user holds
    worker = Daemon("worker1", ["prlimit", "--msgqueue=1", "--", *suite._python("tq.worker", "1")], env, suite.dir)
    suite.daemons.append(worker)
    assert worker.wait() == 1
    (line,) = worker.text().splitlines()
    assert line.startswith(f"tq-worker@1: error: cannot start: cannot open mailbox {suite.prefix}.w.1 (depth 2, ")
    assert "RLIMIT_MSGQUEUE (1 bytes) is used up: this is the hard limit too (ulimit -q cannot go higher)" in line
    assert "LimitMSGQUEUE" not in line and line.endswith("; or lower the depth or size")
    if os.path.ismount("/dev/mqueue"):
        assert "mount" not in line
        assert re.search(r"this user's queues hold it: /\S+ \d+ bytes", line), line
