"""mqueuefs.check_ours: a mailbox of another user is refused before anything is read from it; one of ours with a
wider mode is narrowed; the line names the owner and says how to remove it."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest

from tq.transport import MailboxForeign, mqueuefs, posix


@pytest.fixture
def queue() -> Iterator[posix_ipc.MessageQueue]:
    q = posix_ipc.MessageQueue(f"/tqt-unit-{uuid.uuid4().hex[:8]}", posix_ipc.O_CREX, mode=0o600, max_messages=2,
                               max_message_size=64)
    yield q
    q.unlink()
    q.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (gives a queue to another user)")
@pytest.mark.parametrize("create", [True, False], ids=["create", "open"])
def test_a_mailbox_of_another_user_is_refused_and_left_alone(queue: posix_ipc.MessageQueue, create: bool) -> None:
    os.fchown(queue.mqd, 65534, 65534)
    queue.send(b"theirs")
    with pytest.raises(MailboxForeign, match=f"^mailbox {queue.name} belongs to (user nobody \\()?uid 65534"):
        posix.open_mailbox(queue.name, 5, 128, create=create)  # other dimensions: it would have been drained
    assert (queue.current_messages, queue.max_messages) == (1, 2)


def test_a_mailbox_of_ours_with_a_wider_mode_is_narrowed(queue: posix_ipc.MessageQueue) -> None:
    os.fchmod(queue.mqd, 0o622)
    mqueuefs.check_ours(queue.mqd, queue.name, 0o600)
    assert stat.S_IMODE(os.fstat(queue.mqd).st_mode) == 0o600


def test_the_refusal_names_the_owner_and_how_to_remove_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = mqueuefs.foreign("/tq.w.7", 65534)
    assert line.startswith("mailbox /tq.w.7 belongs to user nobody (uid 65534), not to this process's user ")
    assert line.endswith("or another tq uses this [mqueue] prefix; remove it (as root: rm /dev/mqueue/tq.w.7) or "
                         "set [mqueue] prefix") or not os.path.ismount("/dev/mqueue")
    assert mqueuefs.foreign("/tq.w.7", None).startswith("mailbox /tq.w.7 belongs to another user, ")
    monkeypatch.setattr(mqueuefs, "MQUEUE_DIR", str(tmp_path))  # not a mount: say how to mount it
    assert f"(as root: rm {tmp_path}/tq.w.7, after mount -t mqueue none {tmp_path})" in mqueuefs.foreign("/tq.w.7", 7)
