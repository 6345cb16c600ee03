"""A worker whose host mailbox was deleted under it (tq-host re-created it with other dimensions) and filled
while nobody read it: the worker reaches the new one, and what it held reaches the new tq-host."""

from __future__ import annotations

import os
import signal

import posix_ipc
import pytest

from harness import Suite, wait_until
from tq.transport.posix import open_mailbox

# The job ends when the test writes a line to the fifo $TQ_TEST_DIR/go.
HELD = '\n[tasks.held]\ncommand = ["sh", "-c", "read line < \\"$TQ_TEST_DIR/go\\"; echo finished"]\nretries = 0\n'


@pytest.mark.parametrize("recreated_at_once", [True, False], ids=["recreated", "removed-then-created"])
def test_a_worker_on_a_deleted_full_host_mailbox_reaches_the_new_host(suite: Suite, recreated_at_once: bool) -> None:
    os.mkfifo(suite.dir / "go")
    suite.write_config(HELD)
    host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("held")
    w1.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))
    host.signal(signal.SIGTERM)
    assert host.wait() == 0

    # What a tq-host start with another mailbox depth does before it fails (a corrupt store, say): drain and
    # remove the mailbox the worker holds, and (at once, or at the next start) make a new one.
    name = f"{suite.prefix}.host"
    orphan = posix_ipc.MessageQueue(name)
    size = orphan.max_message_size
    if recreated_at_once:
        open_mailbox(name, 5, size).close()
    else:
        while orphan.current_messages:
            orphan.receive()
        orphan.unlink()
    try:
        # Nobody reads the deleted mailbox: the worker's heartbeats fill it, and its next sends are blocked.
        wait_until(lambda: orphan.current_messages == orphan.max_messages, 10, "the deleted mailbox full")
        idle = len(w1.notify.messages)
        with open(suite.dir / "go", "w") as go:  # the job ends: its result waits in the worker
            go.write("go\n")
        # the job has ended (its status no longer names it: "waiting for tq-host ..." while the host is away)
        w1.notify.wait_for(lambda m: m.startswith("STATUS=") and "running job" not in m, start=idle)
        suite.write_config(HELD, max_messages=5)
        suite.host()  # the good start
        c = suite.client()
        job = c.wait(jid, timeout=15)
        assert (job["state"], job["attempts"], job["result"]) == ("done", 1, "finished")  # reported, not rerun
        suite.wait_live(1)
        again = c.wait(c.submit("task-1", "again"), timeout=10)
        assert (again["state"], again["worker"], again["result"]) == ("done", "1", "task-1 again processed")
        assert w1.proc.poll() is None
    finally:
        orphan.close()
