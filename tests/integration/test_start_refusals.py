"""tq-host refuses to start, in one line and with exit status 1, when what it would take over is not its own: a
file at `host.socket` that is no socket, a damaged store. It changes nothing and leaves no socket behind."""

from __future__ import annotations

import socket

import pytest

from harness import Suite


def failed_start(suite: Suite) -> str:
    """Start tq-host, which must fail: exit status 1 and one line (no traceback) on its stderr; that line."""
    host = suite.host(ready=False)
    assert host.wait() == 1
    text = host.text()
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
