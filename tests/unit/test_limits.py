"""The kernel's queue limits: read from /proc/sys/fs/mqueue, or found by trying where it is hidden; and what
the daemons use of a configuration that asks for more."""

from __future__ import annotations

import resource
import uuid
from pathlib import Path

import posix_ipc
import pytest

from tq.transport import mqueuefs, posix


def _proc(tmp_path: Path, msg_max: int, msgsize_max: int) -> Path:
    for name, value in (("msg_max", msg_max), ("msgsize_max", msgsize_max), ("queues_max", 256)):
        (tmp_path / name).write_text(f"{value}\n")
    return tmp_path


def test_a_configuration_above_the_kernel_limits_gets_what_the_kernel_grants_and_says_how_to_raise_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(posix, "MQ_PROC", _proc(tmp_path, 10, 8192))
    granted = posix.grant(32, 65536)
    assert (granted.max_messages, granted.max_message_size, granted.msg_max) == (10, 8192, 10)
    depth, size = granted.notes
    assert depth.startswith("mqueue.max_messages = 32 exceeds fs.mqueue.msg_max = 10: using 10")
    assert "sysctl -w fs.mqueue.msg_max=32" in depth
    assert "larger jobs are refused at submit" in size and "sysctl -w fs.mqueue.msgsize_max=65536" in size
    assert posix.grant(8, 4096).notes == ()


def test_where_proc_sys_is_hidden_the_limits_are_found_by_trying(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = posix.kernel_limits()
    monkeypatch.setattr(posix, "MQ_PROC", tmp_path / "hidden")
    probed = posix.kernel_limits(depth_wanted=real["msg_max"] + 50, size_wanted=real["msgsize_max"] + 100)
    assert (probed["msg_max"], probed["msgsize_max"]) == (real["msg_max"], real["msgsize_max"])
    assert posix.kernel_limits(depth_wanted=4, size_wanted=512) == {"msg_max": 4, "msgsize_max": 512}


def test_a_mailbox_costs_its_depth_times_its_message_size_and_bookkeeping() -> None:
    assert posix.mailbox_bytes(9, 8192) == 9 * (8192 + posix.PER_MESSAGE_OVERHEAD)


def test_the_budget_hint_says_raise_it_only_below_the_hard_limit_and_the_unit_only_under_systemd() -> None:
    held = "this user's queues hold it: /a 100 bytes"
    below = posix.raise_hint(819200, 64 << 20, systemd=True, held=held)
    assert below == ("raise it (LimitMSGQUEUE= in the unit, or ulimit -q, up to the hard limit 67108864 bytes), or "
                     f"free some: {held}; or lower the depth or size")
    assert "unit" not in posix.raise_hint(819200, 64 << 20, systemd=False, held=held)
    assert "(ulimit -q, no hard limit)" in posix.raise_hint(819200, resource.RLIM_INFINITY, systemd=False, held=held)
    at_hard = posix.raise_hint(819200, 819200, systemd=True, held=held)  # a container: LimitMSGQUEUE=64M unapplied
    assert not at_hard.startswith("raise it") and "CAP_SYS_RESOURCE" in at_hard and "LimitMSGQUEUE=" in at_hard
    by_hand = posix.raise_hint(819200, 819200, systemd=False, held=held)
    assert by_hand == ("this is the hard limit too (ulimit -q cannot go higher), which only CAP_SYS_RESOURCE raises: "
                       f"{held}; or lower the depth or size")


def test_what_holds_the_budget_lists_this_users_queues_largest_first(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/mqueue as a directory naming real queues of this user: the five largest, with what each costs."""
    queues = [posix_ipc.MessageQueue(f"/tqt-unit-{uuid.uuid4().hex[:8]}", posix_ipc.O_CREX, mode=0o600,
                                     max_messages=depth, max_message_size=64) for depth in range(1, 8)]
    try:
        for q in queues:
            (tmp_path / q.name[1:]).touch()
        monkeypatch.setattr(mqueuefs, "MQUEUE_DIR", str(tmp_path))
        monkeypatch.setattr(mqueuefs, "mounted", lambda: True)
        listed = ", ".join(f"{q.name} {posix.mailbox_bytes(q.max_messages, 64)} bytes" for q in queues[:1:-1])
        assert mqueuefs.held_by_user(posix.mailbox_bytes) == (
            f"this user's queues hold it: {listed} and 2 more (rm {tmp_path}/NAME removes one no longer used)")
    finally:
        for q in queues:
            q.unlink()
            q.close()
    assert mqueuefs.held_by_user(posix.mailbox_bytes).startswith(f"this user has no queue in {tmp_path}")
    monkeypatch.setattr(mqueuefs, "mounted", lambda: False)
    assert mqueuefs.held_by_user(posix.mailbox_bytes) == (
        f"remove stale queues (as root: mount -t mqueue none {tmp_path}; ls -l {tmp_path})")
