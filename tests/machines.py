"""Simulated worker machines for the AMQP tests: network namespaces on a bridge of their own, each running real
tq-worker processes under its own hostname (`unshare --uts`), so that their names (N@MACHINE) differ as on real
machines, and each reaching the broker only through its link, which a test may cut and restore.

    with Network(machines=2) as net:              # or the `network` fixture below (one per test module)
        Broker(listen=(net.address,))             # a broker the machines reach (the bridge's address)
        m = net.machines[0]
        w = m.worker(suite, broker.url_at(net.address), "1")   # ready: READY=1 on the harness's notify socket
        m.cut(); m.restore()                      # the machine's link down, up (its processes keep running)

Each machine: namespace and links named after this process (several runs and the bench's lab coexist; a run
removes what a killed one left), a /24
of 10.0.0.0/8 no interface of this host uses, host end of the veth on the bridge (`cut` sets it down: the machine
hears nothing and nobody hears it, as with a pulled cable). The harness's NOTIFY_SOCKET is a Unix socket path,
a filesystem object, so it is reached from inside a namespace. POSIX queues are this kernel's (the IPC namespace
is shared) but remote workers use none. `ip netns del` frees a veth only later: the host end is deleted first.
Without the privilege to make namespaces the fixture skips loudly; with TQ_REQUIRE_SYSTEM_TESTS=1 it fails.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import skip_or_fail
from harness import Daemon, Suite
from tq.transport.machines import machine_instance


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_interface(word).network
            for line in ip("-4", "-o", "addr").stdout.splitlines() for word in line.split() if "/" in word]
    used += [ipaddress.ip_network(line.split()[0]) for line in ip("-4", "route").stdout.splitlines()
             if line.split()[0][0].isdigit()]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randrange(100, 250)}.{random.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /24 in 10.0.0.0/8 for the test bridge")


def descendants(pid: int) -> list[int]:
    """A process's children, theirs, and so on (a job's process runs in a session of its own)."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *descendants(child)]
    return found


class Machine:
    """One worker machine: a namespace, its link (the veth's host end) and its hostname."""

    def __init__(self, net: Network, index: int) -> None:
        self.netns = f"tqf{net.tag}m{index}"
        self.link = f"tqf{net.tag}h{index}"
        self.hostname = f"tqf{net.tag}-m{index}"
        self.address = str(net.subnet[10 + index])

    def up(self, net: Network) -> None:
        ip("netns", "add", self.netns)
        ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("link", "set", self.link, "master", net.bridge, "up")
        ip("-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        ip("-n", self.netns, "link", "set", "eth0", "up")
        ip("-n", self.netns, "link", "set", "lo", "up")

    def down(self) -> None:
        self.kill_all()
        ip("link", "del", self.link, check=False)  # at once: `ip netns del` frees the pair only later
        ip("netns", "del", self.netns, check=False)

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace (workers, and the jobs they left running)."""
        pids = ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in map(int, pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cut(self) -> None:
        ip("link", "set", self.link, "down")

    def restore(self) -> None:
        ip("link", "set", self.link, "up")

    def name(self, instance: str) -> str:
        """A worker's name on this machine, as tq-host knows it."""
        return machine_instance(instance, self.hostname)

    def config(self, suite: Suite, url: str, queues: str = '["remote"]', extra: str = "") -> Path:
        """This machine's tq configuration for `suite`: the broker, the suite's mailbox prefix, a runtime directory
        of its own (the instance locks), `extra` (more tables, [amqp] heartbeat for one)."""
        d = suite.dir / self.hostname
        d.mkdir(exist_ok=True)
        path = d / "tq.toml"
        path.write_text(f'[host]\nsocket = "{d}/tq.sock"\n[mqueue]\nprefix = "{suite.prefix}"\n'
                        f'[transport]\nkind = "amqp"\nurl = "{url}"\n'
                        f'[worker]\nqueues = {queues}\nheartbeat = "200ms"\nstop_timeout = "5s"\n'
                        f'{extra}\n[tasks."#"]\nhandler = "echo"\n')
        return path

    def worker(self, suite: Suite, url: str, instance: str = "1", ready: bool = True, extra: str = "") -> Daemon:
        """tq-worker INSTANCE on this machine, under its hostname, with this machine's configuration."""
        config = self.config(suite, url, extra=extra)
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname, *suite._python("tq.worker", instance)]
        argv[argv.index("--config") + 1] = str(config)
        d = Daemon(f"{self.hostname}-w{instance}-{uuid.uuid4().hex[:4]}", argv, suite.env, suite.dir)
        suite.daemons.append(d)  # every exec above replaces its process: d.pid is tq-worker's own
        return d.ready(timeout=60) if ready else d

    def kill9(self, worker: Daemon) -> None:
        """kill -9 of a worker and of its jobs' processes, as systemd stops what is left in the unit's cgroup."""
        for pid in [worker.pid, *descendants(worker.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait()


_networks = itertools.count()
STALE = re.compile(r"^tqf([0-9a-f]+)x\d+[mbh]\d*$")  # a namespace or link of ours, with its process's pid


def remove_stale() -> None:
    """Remove the namespaces, links and bridges left by a test process that is gone (killed before its teardown)."""
    names = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    links = [line.split()[0].split("@")[0] for line in ip("-br", "link").stdout.splitlines() if line.strip()]
    for name in names + links:
        m = STALE.match(name)
        if m and not os.path.exists(f"/proc/{int(m.group(1), 16)}"):
            if name in names:
                for pid in ip("netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                ip("netns", "del", name, check=False)
            else:
                ip("link", "del", name, check=False)


class Network:
    """A bridge with an address of this host's, and `machines` worker machines on it."""

    def __init__(self, machines: int = 2) -> None:
        self.tag = f"{os.getpid():x}x{next(_networks)}"  # this process's: a later run removes what it left
        self.bridge = f"tqf{self.tag}b"
        self.subnet = _free_subnet()
        self.address = str(self.subnet[1])
        self.machines = [Machine(self, i) for i in range(1, machines + 1)]

    def __enter__(self) -> Network:
        made = ip("link", "add", self.bridge, "type", "bridge", check=False)
        if made.returncode == 0:
            remove_stale()
        if made.returncode != 0:
            skip_or_fail(f"AMQP MACHINE TESTS NOT RUN: no network namespaces here ({made.stderr.strip()}); they need "
                         "root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 and util-linux's unshare")
        try:
            ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for m in self.machines:
                m.up(self)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for m in self.machines:
            m.down()
        ip("link", "del", self.bridge, check=False)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    with Network(machines=2) as net:
        yield net
