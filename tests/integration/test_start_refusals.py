"""tq-host refuses to start, in one line and with exit status 1, when what it would take over is not its own: a
file at `host.socket` that is no socket, a damaged store. It changes nothing and leaves no socket behind."""

from __future__ import annotations

import getpass
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Suite


def failed_start(suite: Suite) -> str:
    """Start tq-host, which must fail: exit status 1 and one line (no traceback) on its stderr; that line."""
    log = suite.dir / "host.log"  # (an earlier host of the test wrote to it too)
    earlier = log.stat().st_size if log.exists() else 0
    host = suite.host(ready=False)
    assert host.wait() == 1
    text = log.read_bytes()[earlier:].decode()
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_a_file_at_the_socket_path_that_is_no_socket_is_left_alone_and_refused(suite: Suite, kind: str) -> None:
    path = suite.dir / "tq.sock"
    precious = suite.dir / "precious.txt"
    precious.write_text("precious data\n")
    if kind == "file":
        path.write_text("precious data\n")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(precious)
    line = failed_start(suite)
    what = {"file": "a regular file", "directory": "a directory", "symlink": "a symbolic link"}[kind]
    assert f"cannot start: host.socket: {path} exists and is not a socket but {what}" in line
    assert precious.read_text() == "precious data\n"
    if kind == "file":
        assert path.read_text() == "precious data\n"
    else:
        assert path.is_dir() if kind == "directory" else path.is_symlink()


def test_a_stale_socket_at_the_socket_path_is_replaced(suite: Suite) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(suite.dir / "tq.sock"))
    stale.close()  # its file stays: a host killed with -9 leaves one
    suite.host()
    assert suite.client().status()["version"]


def test_config_check_refuses_a_socket_path_where_a_file_is(suite: Suite) -> None:
    (suite.dir / "tq.sock").write_text("precious data\n")
    r = suite.tqctl("config", "check")
    assert r.returncode == 2
    assert f"host.socket: {suite.dir}/tq.sock exists and is not a socket but a regular file" in r.stderr


def damage_a_page(store: Path, table: str) -> None:
    """Overwrite a leaf page in the middle of a table with random bytes, as a failing disk might (the tester's §5:
    the store opens, and reading its jobs fails)."""
    db = sqlite3.connect(store)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    leaves = [n for (n,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                       "ORDER BY pageno", (table,))]
    db.close()
    with open(store, "r+b") as f:
        f.seek(page_size * (leaves[len(leaves) // 2] - 1))
        f.write(os.urandom(page_size))


def test_a_damaged_store_is_refused_in_one_line_that_says_what_to_do_and_no_socket_is_left(suite: Suite) -> None:
    suite.host()
    c = suite.client()
    c.submit_many([("task-1", [str(i) * 50]) for i in range(300)])  # some pages of jobs
    suite.store_rows("SELECT 1")  # a clean stop
    store = suite.dir / "state" / "tq.sqlite3"
    damage_a_page(store, "jobs")
    line = failed_start(suite)
    assert f"cannot start: store {store} is damaged" in line
    assert f"sqlite3 {store} 'PRAGMA integrity_check'" in line and "restore" in line
    assert not (suite.dir / "tq.sock").exists()
    r = suite.tqctl("status")
    assert r.returncode == 3 and "No such file" in r.stderr


def test_a_truncated_store_is_refused_as_damaged_too(suite: Suite) -> None:
    suite.host()
    suite.client().submit_many([("task-1", [str(i) * 50]) for i in range(300)])
    suite.store_rows("SELECT 1")
    store = suite.dir / "state" / "tq.sqlite3"
    os.truncate(store, store.stat().st_size // 2)
    line = failed_start(suite)
    assert f"cannot start: store {store} is damaged (database disk image is malformed)" in line
    assert not (suite.dir / "tq.sock").exists()


def test_a_state_dir_the_host_cannot_write_is_refused_naming_the_key_and_the_user(suite: Suite) -> None:
    state = suite.dir / "state"
    state.mkdir(mode=0o555)
    if os.access(state, os.W_OK) and os.geteuid() == 0:
        state.chmod(0o755)  # root writes anyway: a read-only directory of root's is seen by nobody instead
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                            "tq.host", "--config", str(suite.config)], env=suite.env, capture_output=True,
                           text=True, timeout=30)
        user = "nobody"
    else:
        r = subprocess.run([sys.executable, "-m", "tq.host", "--config", str(suite.config)], env=suite.env,
                           capture_output=True, text=True, timeout=30)
        user = getpass.getuser()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (f"cannot start: host.state_dir: cannot write {state}/tq.lock: Permission denied (as user {user})"
            in r.stderr), r.stderr
