"""The kernel's queue limits: read from /proc/sys/fs/mqueue, or found by trying where it is hidden; and what
the daemons use of a configuration that asks for more."""

from __future__ import annotations

from pathlib import Path

import pytest

from tq.transport import posix


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


def test_the_budget_hint_says_raise_it_only_below_the_hard_limit() -> None:
    below = posix.raise_hint(819200, 64 << 20)
    assert below.startswith("raise it (LimitMSGQUEUE= in the unit, ulimit -q)") and "remove stale queues" in below
    at_hard = posix.raise_hint(819200, 819200)  # a container: the unit's LimitMSGQUEUE=64M was not applied
    assert not at_hard.startswith("raise it") and "CAP_SYS_RESOURCE" in at_hard and "ls /dev/mqueue" in at_hard
