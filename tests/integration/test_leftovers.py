"""What a command job leaves behind in its process group once its main process ended: SIGTERM at once, SIGKILL
after the task's kill_grace, SIGKILL when the worker stops."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Suite, wait_until

# Each prints the pid of the background process it leaves (its output elsewhere: the job's pipes close).
LEAVES = '["sh", "-c", "sleep 1000 > /dev/null 2>&1 & echo $!"]'
# It waits until its child ignores SIGTERM (a fifo as the handshake).
STUBBORN = ('["sh", "-c", "f=$TQ_TEST_DIR/ready.$TQ_JOB_ID; mkfifo $f; '
            '(trap \\"\\" TERM; echo ok > $f; exec sleep 1000) > /dev/null 2>&1 & read x < $f; echo $!"]')


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_finished_job_s_background_child_is_stopped(suite: Suite) -> None:
    suite.write_config(f"\n[tasks.leaves]\ncommand = {LEAVES}\nretries = 0\n")
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("leaves")
    job = c.wait(jid, timeout=10)
    assert job["state"] == "done"
    child = int(job["result"])
    wait_until(lambda: gone(child), 5, f"the job's background child {child} gone")
    assert f"job {jid}: stopping what it left running in its process group" in w1.text()
    again = c.wait(c.submit("leaves"), timeout=10)  # the worker carries on
    assert again["state"] == "done"


def test_a_leftover_that_ignores_sigterm_is_killed_after_kill_grace(suite: Suite) -> None:
    suite.write_config(f'\n[tasks.stubborn]\ncommand = {STUBBORN}\nkill_grace = "2s"\nretries = 0\n')
    suite.start(workers=1)
    c = suite.client()
    job = c.wait(c.submit("stubborn"), timeout=10)
    assert job["state"] == "done"
    child = int(job["result"])
    assert not gone(child)  # SIGTERM does not stop it
    wait_until(lambda: gone(child), 10, f"the job's background child {child} gone")


def test_a_stopping_worker_kills_leftovers_still_in_their_grace(suite: Suite) -> None:
    suite.write_config(f'\n[tasks.stubborn]\ncommand = {STUBBORN}\nkill_grace = "60s"\nretries = 0\n')
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    job = c.wait(c.submit("stubborn"), timeout=10)
    child = int(job["result"])
    assert not gone(child)
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    wait_until(lambda: gone(child), 5, f"the job's background child {child} gone")
