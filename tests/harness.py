"""A real tq suite for tests and the chaos run: tq-host and workers as processes, real POSIX queues,
a real SQLite file in a temporary state dir, and a datagram socket per process standing in for
systemd's NOTIFY_SOCKET so callers await READY=1, STATUS=... instead of sleeping."""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import posix_ipc

from tq.client import Client

ROOT = Path(__file__).resolve().parent.parent
# Every queue counts against RLIMIT_MSGQUEUE (819,200 bytes per user by default): take the hard limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
resource.setrlimit(resource.RLIMIT_MSGQUEUE, (_hard, _hard))
TESTS = ROOT / "tests"
# Only root makes an API token that acts as root or as the daemons' own user (README: token create), and a tq-host
# run by another user lets in no one else (but members of that user's group); nor does it take act_as from a
# gateway of that user (only root and [access] gateways): so without root no test gets a token, nor checks one.
NO_TOKENS = None if os.geteuid() == 0 else (
    "needs root (API tokens: only root makes one that acts as the daemons' own user, here the tester)")


def tokens_or_skip() -> None:
    """Skip the test, saying why, where no API token can be made (not root)."""
    if NO_TOKENS is not None:
        import pytest  # (here only: the chaos run imports this module without pytest's fixtures)

        pytest.skip(NO_TOKENS)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll a condition that has no event to await (a state in another process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Notify:
    """A fake systemd notify socket: a thread records every datagram a daemon sends, as systemd would."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.changed:
                self.messages.extend(data.decode().split("\n"))
                self.changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0, start: int = 0) -> str:
        """Block until a datagram line satisfying `predicate` has arrived (index >= start)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.messages[start:]:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notify message in {timeout}s; got {self.messages[-20:]}")
                self.changed.wait(left)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class Daemon:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, **popen: Any) -> None:
        self.name = name
        self.notify = Notify(workdir / f"notify-{name}-{uuid.uuid4().hex[:6]}.sock")
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": self.notify.path}, stdout=self.log,
                                     stderr=subprocess.STDOUT, **popen)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, timeout: float = 15.0) -> Daemon:
        self.notify.wait_for(lambda m: m == "READY=1", timeout)
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP (systemctl reload), and wait for the READY=1 that ends the reload."""
        start = len(self.notify.messages)
        self.signal(signal.SIGHUP)
        self.notify.wait_for(lambda m: m == "READY=1", timeout, start)

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        self.notify.close()


def as_from_a_terminal() -> None:
    """preexec_fn for a command that a test stops with Ctrl-C (SIGINT): SIGINT at its default, as a terminal's
    shell starts a command. A command started in the background by a non-interactive shell (CI's may be one)
    inherits SIGINT ignored, and then Ctrl-C rightly does nothing to it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Gateway:
    """A tq-gateway process, where it listens, and the token `request` sends by default (root's, made by the
    suite; None: none). `tokenless`: the suite could make none (not root): reading `token` skips the test."""

    def __init__(self, daemon: Daemon, port: int, token: str | None = None, tokenless: bool = False) -> None:
        self.daemon, self.port, self._token, self.tokenless = daemon, port, token, tokenless
        self.url = f"http://127.0.0.1:{port}"

    @property
    def token(self) -> str | None:
        if self.tokenless:
            tokens_or_skip()
        return self._token

    def rpc_url(self, token: str | None = None) -> str:
        """/RPC2 with a token as basic authentication's password (as a stock XML-RPC client sends it)."""
        return f"http://tq:{token or self.token}@127.0.0.1:{self.port}/RPC2"




class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.raw = status, headers, body

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str:
        return str(self.json["error"]["code"])


DEFAULT = "(the gateway's)"


def request(gw: Gateway, method: str, path: str, body: Any = None, token: str | None = DEFAULT,
            headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
    """One HTTP request to tq-gateway with a token (by default the suite's root token; None: none); a body that
    is not bytes is sent as JSON."""
    token = gw.token if token == DEFAULT else token
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


class Suite:
    """One isolated tq installation: its own config, state dir, socket and queue prefix."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.prefix = f"/tqt-{os.getpid()}-{uuid.uuid4().hex[:10]}"  # the pid: conftest tells the stale ones
        self.config = tmp / "tq.toml"  # world-readable: some tests run tqctl as another user
        self.daemons: list[Daemon] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT / "daemons")]),
                    "TQ_TEST_DIR": str(tmp)}
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("WATCHDOG_USEC", None)
        self.write_config("")
        self._clients: list[Client] = []

    def write_config(self, extra: str, lease: str = "3s", heartbeat: str = "200ms", max_messages: int = 4,
                     echo_catch_all: bool = True, host: str = "") -> None:
        text = f"""
[host]
state_dir = "{self.dir}/state"
socket = "{self.dir}/tq.sock"
lease = "{lease}"
{host}

[mqueue]
prefix = "{self.prefix}"
max_messages = {max_messages}

[worker]
heartbeat = "{heartbeat}"
stop_timeout = "5s"
{extra}
"""
        if echo_catch_all:
            text += '\n[tasks."#"]\nhandler = "echo"\n'
        self.config.write_text(text)

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, "--config", str(self.config), *args]

    def host(self, ready: bool = True, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon("host", self._python("tq.host"), {**self.env, **(env or {})}, self.dir)
        self.daemons.append(d)
        return d.ready() if ready else d

    def worker(self, instance: str = "1", ready: bool = True, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(f"worker{instance}", self._python("tq.worker", instance), {**self.env, **(env or {})}, self.dir)
        self.daemons.append(d)
        return d.ready() if ready else d

    def token(self, user: str = "root", read_only: bool = False, name: str | None = None) -> str:
        """A new API token for `user` (tq-host must be up); without root the test is skipped (NO_TOKENS)."""
        tokens_or_skip()
        name = name or f"t{uuid.uuid4().hex[:12]}"
        return str(self.client().token_create(name, user, read_only)["token"])

    def gateway(self, ready: bool = True, env: dict[str, str] | None = None, token: bool = True) -> Gateway:
        """tq-gateway on a port of its own, socket-activated as systemd would (the test binds port 0 and passes the
        socket as descriptor 3 with LISTEN_FDS=1 and LISTEN_PID set to the gateway's pid)."""
        listener = socket.create_server(("127.0.0.1", 0))
        fd = listener.fileno()
        activate = (f"import os, sys; os.dup2({fd}, 3); os.environ.update(LISTEN_PID=str(os.getpid()), "
                    f"LISTEN_FDS='1'); os.execv(sys.executable, sys.argv[1:])")
        argv = [sys.executable, "-c", activate, *self._python("tq.gateway")]
        d = Daemon(f"gateway{len(self.daemons)}", argv, {**self.env, **(env or {})}, self.dir, pass_fds=(fd,))
        self.daemons.append(d)
        made = token and NO_TOKENS is None  # (without root: skipped where the test reads gateway.token)
        gateway = Gateway(d, listener.getsockname()[1], self.token() if made else None, tokenless=token and not made)
        listener.close()
        if ready:
            d.ready()
        return gateway

    def start(self, workers: int = 1) -> tuple[Daemon, list[Daemon]]:
        host = self.host()
        ws = [self.worker(str(i)) for i in range(1, workers + 1)]
        self.wait_live(len(ws))
        return host, ws

    def client(self) -> Client:
        c = Client(config=str(self.config), timeout=30)
        self._clients.append(c)
        return c

    def wait_live(self, n: int, timeout: float = 15.0) -> None:
        c = self.client()
        wait_until(lambda: sum(w["state"] == "live" for w in c.workers()) >= n, timeout, f"{n} live worker(s)")

    def tqctl(self, *args: str, user: str | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tq.ctl", "--config", str(self.config), *args]
        if user:
            argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, input=input)

    def store_rows(self, sql: str) -> list[tuple[object, ...]]:
        """Rows from the store, read directly: tq-host holds it exclusively, so every running host is stopped
        first (SIGTERM: a clean stop) and the test ends with no host."""
        for d in self.daemons:
            if d.name == "host" and d.proc.poll() is None:
                d.signal(signal.SIGTERM)
                d.wait()
        db = sqlite3.connect(self.dir / "state" / "tq.sqlite3")
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def executions(self) -> list[str]:
        """Lines written by tests/handlers.py: one per execution of a recording task."""
        path = self.dir / "executions.log"
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for d in self.daemons:
            d.stop()
        for name in [f"{self.prefix}.host", *(f"{self.prefix}.w.{i}" for i in range(0, 20))]:
            try:
                posix_ipc.unlink_message_queue(name)
            except posix_ipc.ExistentialError:
                pass


@contextmanager
def temporary_suite() -> Iterator[Suite]:
    """A Suite in a fresh directory, torn down after (kept when TQ_TEST_KEEP is set, for a post-mortem).

    Not pytest's tmp_path: its parents are 0700 (tests run tqctl as another user) and its paths are long
    (a Unix socket path has at most 107 bytes).
    """
    tmp = Path(tempfile.mkdtemp(prefix="tq-test-"))
    tmp.chmod(0o755)
    s = Suite(tmp)
    try:
        yield s
    finally:
        s.close()
        if not os.environ.get("TQ_TEST_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
