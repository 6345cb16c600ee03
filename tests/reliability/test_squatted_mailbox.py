"""POSIX queues share one namespace for all users: a queue that another user made under the name of one of tq's
mailboxes (before tq-host's or a worker's start) is refused, never read from or sent to, with one line naming
its owner; a worker waiting for a host mailbox of another user's says so and goes on once it is gone. The other
user is `nobody`: the test makes the queue as root and gives it away (os.fchown), as a squatter's would be."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import posix_ipc
import pytest

from harness import Suite

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (gives a queue to another user, nobody)")

NOBODY = pwd.getpwnam("nobody")
EXIT_FOREIGN = 77


def squat(name: str) -> posix_ipc.MessageQueue:
    """Another user's queue with the mailbox's name and dimensions (the suite's config), open to all, one
    message in it."""
    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o666, max_messages=4, max_message_size=8192)
    os.fchown(q.mqd, NOBODY.pw_uid, NOBODY.pw_gid)
    os.fchmod(q.mqd, 0o666)
    q.send(b"planted")
    return q


def untouched(q: posix_ipc.MessageQueue) -> bool:
    """Nothing was read from it or sent to it."""
    return q.current_messages == 1 and q.receive()[0] == b"planted"


def refusal(name: str) -> str:
    return (f"error: cannot start: mailbox {name} belongs to user nobody (uid {NOBODY.pw_uid}), not to this "
            f"process's user root (uid 0): another user made it, or another tq uses this [mqueue] prefix; remove "
            f"it (as root: rm /dev/mqueue{name}) or set [mqueue] prefix\n")


def test_tq_host_refuses_a_host_mailbox_of_another_user(suite: Suite) -> None:
    name = f"{suite.prefix}.host"
    q = squat(name)
    try:
        host = suite.host(ready=False)
        assert host.wait() == EXIT_FOREIGN
        assert host.text() == f"tq-host: {refusal(name)}"
        assert untouched(q)
    finally:
        q.unlink()
        q.close()


def test_a_worker_refuses_an_inbox_of_another_user(suite: Suite) -> None:
    suite.start(workers=1)
    name = f"{suite.prefix}.w.2"
    q = squat(name)
    try:
        worker = suite.worker("2", ready=False)
        assert worker.wait() == EXIT_FOREIGN
        assert worker.text() == f"tq-worker@2: {refusal(name)}"
        assert untouched(q)
        assert suite.tqctl("submit", "--wait", "task-1").stdout == "task-1 processed\n"  # worker 1 carries on
    finally:
        q.unlink()
        q.close()


def test_a_worker_waits_out_a_host_mailbox_of_another_user_saying_so(suite: Suite) -> None:
    name = f"{suite.prefix}.host"
    q = squat(name)
    worker = suite.worker("1", ready=False)
    worker.notify.wait_for(lambda m: m.startswith("STATUS=waiting for tq-host: mailbox ") and "nobody" in m)
    assert f"warning: waiting for tq-host: mailbox {name} belongs to user nobody" in worker.text()
    assert untouched(q)
    q.unlink()  # root removes it, as the line says
    q.close()
    suite.host()
    worker.ready()
    suite.wait_live(1)


def test_a_mailbox_of_another_user_is_named_without_a_word_of_group_tq(suite: Suite) -> None:
    """mq_open's EACCES (a 0600 queue of another user's): the owner, as /dev/mqueue shows it."""
    name = f"{suite.prefix}.host"
    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600, max_messages=4, max_message_size=8192)
    try:
        probe = ("from tq.transport import posix, MailboxForeign\n"
                 "try:\n"
                 f"    posix.open_mailbox({name!r}, 4, 8192, create=False)\n"
                 "except MailboxForeign as e:\n"
                 "    print(e)\n")
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                            probe], env=suite.env, capture_output=True, text=True, timeout=30)
        assert r.stdout.startswith(f"mailbox {name} belongs to user root (uid 0), not to this process's user nobody "
                                   f"(uid {NOBODY.pw_uid}): "), r.stderr
        assert "group tq" not in r.stdout
    finally:
        q.unlink()
        q.close()
