"""A real RabbitMQ for the tests: Debian's rabbitmq-server as a plain child process on a temporary directory,
its own node name, ports and epmd, listening on loopback (and on the addresses given, such as a bridge's for
worker machines in network namespaces: tests/machines.py); never the packaged service.

    with Broker() as b:          # or the `broker` fixture (one per test module)
        b.url                    # amqp://tq:tqpass@127.0.0.1:PORT/ (the test user, created at first boot)
        b.stop_app(); b.start_app(); b.kill9(); b.start()

The traps (found on this machine, /work/notes/amqp-design.md): /usr/sbin's wrappers su to user rabbitmq and
drop our environment, so the scripts under /usr/lib/rabbitmq/bin are run directly; epmd outlives the node and
is stopped by its port; a second node on taken ports exits 0, so readiness is awaited, never assumed; the
server script execs erl, which has a child: a kill -9 hits the process group. consumer_timeout is 60 s, so
that the tests of long jobs meet RabbitMQ's delivery-acknowledgement timeout.

Without rabbitmq-server the fixture skips loudly; with TQ_REQUIRE_SYSTEM_TESTS=1 (CI) it fails instead.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = "/usr/lib/rabbitmq/bin"
USER, PASSWORD = "tq", "tqpass"


def skip_or_fail(message: str = "") -> None:
    message = message or ("AMQP TESTS NOT RUN: rabbitmq-server is not installed (apt-get install rabbitmq-server; "
                          f"the tests run {BIN}/rabbitmq-server as a plain process)")
    if os.environ.get("TQ_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(message, pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports() -> int:
    """An AMQP port whose successor (a TLS listener's), distribution (+20000) and epmd (+21000) ports are free too."""
    for _ in range(200):
        port = random.randrange(20000, 44000)
        if all(_free(p) for p in (port, port + 1, port + 20000, port + 21000)):
            return port
    raise RuntimeError("no free ports for a broker")


class Broker:
    """One throwaway RabbitMQ node (see the module's docstring)."""

    def __init__(self, consumer_timeout_ms: int = 60000, netns: str | None = None,
                 listen: tuple[str, ...] = (), tls: tuple[Path, Path, Path] | None = None) -> None:
        """`netns`: a network namespace (`ip netns add`) to run the node in, on that namespace's loopback (the
        system tests boot a container in it, so that the container's 127.0.0.1 reaches the node). `listen`:
        addresses to listen on beside loopback (a bridge's, for worker machines as namespaces: tests/machines.py).
        `tls`: (authority, certificate, key) files: the node also takes TLS on loopback at `tls_port`, and asks
        each client for a certificate signed by that authority."""
        self.netns = ["ip", "netns", "exec", netns] if netns else []
        self.port = free_ports()
        self.tls, self.tls_port = tls, self.port + 1  # (free_ports: the next one is free too)
        self.listen = listen
        self.base = tempfile.mkdtemp(prefix="tq-rabbit-")
        self.node = f"tqtest{self.port}-{os.getpid()}@localhost"
        self.consumer_timeout_ms = consumer_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = self.url_at("127.0.0.1")

    def url_at(self, address: str) -> str:
        """The test user's URL through one of the addresses the node listens on."""
        return f"amqp://{USER}:{PASSWORD}@{address}:{self.port}/"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.pop("NOTIFY_SOCKET", None)  # else rabbitmq-server believes systemd runs it
        path = lambda name: os.path.join(self.base, name)  # noqa: E731
        env.update(
            HOME=self.base, RABBITMQ_CONF_ENV_FILE="/dev/null", RABBITMQ_CONFIG_FILE=path("rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=path("advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=path("enabled_plugins"),
            RABBITMQ_MNESIA_BASE=path("mnesia"), RABBITMQ_LOG_BASE=path("log"), RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.port + 20000),
            ERL_EPMD_PORT=str(self.port + 21000), ERL_EPMD_ADDRESS="127.0.0.1", ERL_CRASH_DUMP=path("erl_crash.dump"),
            # no busy-waiting schedulers (the machine is shared); distribution on loopback only
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none "
                                                "-kernel inet_dist_use_interface {127,0,0,1}")
        return env

    def _write_config(self) -> None:
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as f:
            for i, address in enumerate(self.listen, start=2):
                f.write(f"listeners.tcp.{i} = {address}:{self.port}\n")
            f.write(f"listeners.tcp.1 = 127.0.0.1:{self.port}\nconsumer_timeout = {self.consumer_timeout_ms}\n"
                    f"loopback_users = none\ndefault_user = {USER}\ndefault_pass = {PASSWORD}\n"
                    "disk_free_limit.absolute = 10MB\nlog.console = false\n")
            if self.tls:
                ca, cert, key = self.tls
                f.write(f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\nssl_options.cacertfile = {ca}\n"
                        f"ssl_options.certfile = {cert}\nssl_options.keyfile = {key}\n"
                        "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n")
        for name in ("advanced.config", "enabled_plugins"):
            with open(os.path.join(self.base, name), "w") as f:
                f.write("[].\n")
        cookie = os.path.join(self.base, ".erlang.cookie")
        if not os.path.exists(cookie):
            with open(cookie, "w") as f:
                f.write(secrets.token_hex(16))
            os.chmod(cookie, 0o400)  # erl refuses a cookie others may read

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.netns, f"{BIN}/rabbitmqctl", "-n", self.node, *args], env=self.env(),
                              capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start(self) -> None:
        """Start the node (on the same directory after a stop or a kill) and wait until it takes connections."""
        self._write_config()
        with open(os.path.join(self.base, "stdout.log"), "ab") as log:
            self.proc = subprocess.Popen([*self.netns, f"{BIN}/rabbitmq-server"], env=self.env(), stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.await_startup()

    def await_startup(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}: see {self.base}/log")
            r = self.ctl("await_startup", "--timeout", "30", timeout=40)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start: {r.stderr.strip()[-300:]}")
            time.sleep(0.2)  # the node is not registered yet: ask again (polling with a deadline)

    def stop_app(self) -> None:
        assert self.ctl("stop_app").returncode == 0

    def start_app(self) -> None:
        assert self.ctl("start_app").returncode == 0

    def kill9(self) -> None:
        """kill -9 of the whole node (erl and its child)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def delete_queue(self, name: str) -> None:
        r = self.ctl("delete_queue", name)
        assert r.returncode == 0, r.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.ctl("shutdown", timeout=60)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(["epmd", "-kill"], env=self.env(), capture_output=True, check=False)  # it outlives the node

    def __enter__(self) -> Broker:
        if not os.path.exists(f"{BIN}/rabbitmq-server"):
            shutil.rmtree(self.base, ignore_errors=True)
            skip_or_fail()
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with Broker() as b:
        yield b
