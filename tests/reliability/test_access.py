"""Access: the store, the socket and the queues belong to root and group tq; a member of group tq who is
not the owner can use them, anyone else is refused (tqctl: exit 4); the submitter's uid is recorded."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness import Suite

MEMBER = "tqtest-member"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates group tq and a member)")


@pytest.fixture
def member() -> Iterator[pwd.struct_passwd]:
    """Group tq (created if missing) and a user in it who owns none of tq's files."""
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


def as_user(user: str, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv],
                          env=env, capture_output=True, text=True, timeout=60)


def test_files_and_queues_are_for_root_and_group_tq_only(suite: Suite, member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    gid = grp.getgrnam("tq").gr_gid
    state = suite.dir / "state"
    for path in (state / "tq.sqlite3", state / "tq.sqlite3-wal", suite.dir / "tq.sock"):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid), path
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o750
    probe = ("import posix_ipc, sys\n"
             "try:\n"
             f"    q = posix_ipc.MessageQueue('{suite.prefix}.host')\n"
             "    q.send(b'garbage from a member of group tq')\n"
             "    print('sent')\n"
             "except posix_ipc.PermissionsError:\n"
             "    print('refused')\n")
    assert as_user(MEMBER, sys.executable, "-c", probe, env=suite.env).stdout == "sent\n"
    assert as_user("nobody", sys.executable, "-c", probe, env=suite.env).stdout == "refused\n"
    assert suite.tqctl("submit", "--wait", "task-1").returncode == 0  # the garbage did no harm
    assert suite.client().status()["malformed_messages"] == 1


def test_member_submits_with_its_uid_recorded_and_others_get_exit_4(suite: Suite,
                                                                     member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    r = as_user(MEMBER, *tqctl, "submit", "--wait", "--json", "task-1", env=suite.env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["submitter"] == member.pw_uid
    shown = as_user(MEMBER, *tqctl, "show", str(job["id"]), env=suite.env)
    assert f"submitter:   {member.pw_uid}" in shown.stdout
    r = as_user("nobody", *tqctl, "submit", "task-1", env=suite.env)
    assert r.returncode == 4
    assert "permission denied" in r.stderr and "add yourself to group tq" in r.stderr
