"""The one table of error codes (tq.control.ERRORS): the client's exceptions and tqctl's exit statuses come from it,
and it knows every code tq-host sends. A tiny Unix-socket server of the test's own plays tq-host and refuses every
request with the code the test gives."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tq
from tq import control
from tq.client import Client, InternalError, TqError

SOURCE = Path(tq.__file__).parent


class RefusingHost:
    """Answers each request line on `path` with `{"rid": .., "ok": false, "code": code, "error": error}`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.code = "internal"
        self.error = "internal error in tq-host (logged)"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    rid = json.loads(line)["rid"]
                    f.write(control.encode({"rid": rid, "ok": False, "code": self.code, "error": self.error}))
                    f.flush()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RefusingHost]:
    server = RefusingHost(tmp_path / "tq.sock")
    yield server
    server.close()


def test_a_fault_inside_the_host_raises_internal_error(host: RefusingHost) -> None:
    with Client(socket_path=str(host.path), timeout=10) as c, pytest.raises(InternalError) as raised:
        c.status()
    assert str(raised.value) == "internal error in tq-host (logged)"
    assert raised.value.exit_code == control.EXIT_INTERNAL == 7


@pytest.mark.parametrize("code", sorted(control.ERRORS))
def test_each_code_raises_the_exception_of_its_exit_status(host: RefusingHost, code: str) -> None:
    host.code = code
    with Client(socket_path=str(host.path), timeout=10) as c, pytest.raises(TqError) as raised:
        c.get(1)
    assert raised.value.exit_code == control.ERRORS[code].exit_status
    assert 400 <= control.ERRORS[code].http_status < 600 and control.ERRORS[code].meaning


def test_tqctl_exits_7_with_one_line_and_no_traceback_on_a_fault_inside_the_host(
        host: RefusingHost, tmp_path: Path) -> None:
    config = tmp_path / "tq.toml"
    config.write_text(f"[host]\nsocket = {json.dumps(str(host.path))}\n")
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(config)]
    r = subprocess.run([*tqctl, "status"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (7, "", "tqctl: internal error in tq-host (logged)\n")
    r = subprocess.run([*tqctl, "show", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7 and r.stderr == "tqctl: internal error in tq-host (logged)\n"
    assert json.loads(r.stdout) == {"ok": False, "error": "internal error in tq-host (logged)", "exit_code": 7}


def test_every_code_the_host_sends_is_in_the_table() -> None:
    """The codes in RequestError("code", ...), refuse(..., "code", ...) and {"code": "code"} in tq's source."""
    patterns = (r'RequestError\(\s*"(\w+)"', r'refuse\([^()]*?"(\w+)"', r'"code":\s*"(\w+)"')
    sent = {code for path in SOURCE.rglob("*.py") for pattern in patterns
            for code in re.findall(pattern, path.read_text())}
    assert {"bad_request", "not_found", "unavailable", "timeout", "permission"} <= sent  # the search finds them
    assert sent <= set(control.ERRORS)


@pytest.mark.parametrize(("message", "shown"), [
    ("tq-gateway cannot reach its tq-host at /run/tq/tq.sock: No such file or directory",
     "tq-gateway at http://gw:8790 cannot reach its tq-host at /run/tq/tq.sock: No such file or directory"),
    ("tq-host is not reachable at /run/tq/tq.sock: No such file or directory",  # (an older gateway's words)
     "tq-gateway at http://gw:8790 cannot reach its tq-host at /run/tq/tq.sock: No such file or directory"),
    ("tq-gateway has too many connections: try again later", "tq-gateway has too many connections: try again later"),
])
def test_a_remote_client_says_whose_tq_host_is_down(message: str, shown: str) -> None:
    """The gateway's 503 for its tq-host names a socket path on the gateway's machine: the remote client says it
    is the gateway at its URL that cannot reach it (still exit 3)."""
    from tq.remote import Answer, HttpConnection

    body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
    e = HttpConnection("http://gw:8790", "t")._error(Answer(503, "application/json", body, "/api/v1/status"))
    assert (str(e), e.exit_code) == (shown, control.EXIT_UNREACHABLE)
