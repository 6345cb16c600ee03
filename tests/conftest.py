"""pytest fixtures: each test gets its own real tq suite (see harness.py)."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Suite, temporary_suite

MQUEUE_FS = Path("/dev/mqueue")
# Users and groups the tests make: named for this test session, so that two sessions on one machine (or one
# killed before its teardown) never meet on a name.
TEST_NAMES = f"tqtest-{os.getpid()}"
MEMBER = f"{TEST_NAMES}-member"


@pytest.fixture(scope="session", autouse=True)
def no_stale_test_queues() -> None:
    """Remove queues left by an earlier test session that was killed (prefix /tqt-PID-).

    Queue memory counts against a per-user limit (RLIMIT_MSGQUEUE) that also covers the system
    tests' containers, so leftovers would make later tests fail for want of room. Only the queues of
    processes that are gone: removing a live session's (a bench, another test run) made its workers
    wait for a host mailbox that was no more.
    """
    if os.geteuid() != 0:
        return
    if not os.path.ismount(MQUEUE_FS):
        MQUEUE_FS.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "mqueue", "mqueue", str(MQUEUE_FS)], check=False, capture_output=True)
    for stale in MQUEUE_FS.glob("tqt-*"):
        owner = stale.name.split("-")[1]
        if not owner.isdigit() or not os.path.exists(f"/proc/{owner}"):
            stale.unlink(missing_ok=True)


@pytest.fixture
def suite() -> Iterator[Suite]:
    with temporary_suite() as s:
        yield s


@pytest.fixture
def signals() -> Iterator[None]:
    """Give the process its signal handlers and wake-up fd back after an in-process daemon took them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    signal.set_wakeup_fd(-1)
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def member() -> Iterator[pwd.struct_passwd]:
    """Group tq (created if missing) and a user in it who owns none of tq's files: who a token may act for
    (neither root nor an admin). Needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates group tq and a member)")
    made_group = False
    try:
        grp.getgrnam("tq")
    except KeyError:
        subprocess.run(["groupadd", "--system", "tq"], check=True)
        made_group = True
    subprocess.run(["useradd", "--system", "--no-create-home", "-G", "tq", MEMBER], check=True)
    try:
        yield pwd.getpwnam(MEMBER)
    finally:
        subprocess.run(["userdel", MEMBER], check=False)
        if made_group:
            subprocess.run(["groupdel", "tq"], check=False)
