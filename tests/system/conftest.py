"""System tests: tq on a real systemd (Debian bookworm booted in systemd-nspawn).

Run, as root:  make deb && TQ_REQUIRE_SYSTEM_TESTS=1 .venv/bin/python -m pytest tests/system -v
Needs:         apt-get install debootstrap systemd-container (util-linux gives nsenter);
               test_package.py installs TQ_DEB or the newest dist/tq_*.deb.

tests/system/rootfs.sh builds a bookworm rootfs once with debootstrap (about
45 s) and caches it outside the repo: TQ_ROOTFS, default
/var/cache/tq-test/bookworm; it is rebuilt when missing or when its recipe
changes. Each test module copies it (cp --reflink=auto: 1 to 8 s on ext4) to
/var/tmp/tq-system-*, boots it with `systemd-nspawn -b --private-network`
(under 1 s to "running") and runs commands in it with `nsenter`; no machined
or systemd is needed on the host. The copy is powered off and deleted at the
end of the module, so the cache stays clean.

The container gets a writable /proc/sys (SYSTEMD_NSPAWN_API_VFS_WRITABLE=1)
so that tq's sysctl.d file can raise fs.mqueue.* in the container's own IPC
namespace; the rootfs masks Debian's sysctl.d files that would change
host-wide settings. Run one session at a time: the containers share the host's
user namespace, so user tq's RLIMIT_MSGQUEUE budget is shared between them.

Without root or systemd-nspawn every test here is skipped with the reason;
with TQ_REQUIRE_SYSTEM_TESTS=1 (CI) that skip is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nspawn import HERE, Container, built_package, cannot_run_reason


def skip_or_fail(reason: str) -> None:
    message = f"SYSTEM TESTS NOT RUN: {reason}"
    if os.environ.get("TQ_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(message, pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    yield from booted(writable_sysctl=True)


@pytest.fixture(scope="module")
def readonly_container() -> Iterator[Container]:
    """A container whose /proc/sys is read-only, as LXC and most container hosts give it."""
    yield from booted(writable_sysctl=False)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A network namespace of its own (`ip netns add`), its loopback up."""
    if os.geteuid() != 0:
        skip_or_fail("system tests need root (ip netns add, systemd-nspawn, nsenter)")
    if shutil.which("ip") is None:
        skip_or_fail("cannot make a network namespace: no ip(8) (apt-get install iproute2)")
    name = f"tqsys-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        skip_or_fail(f"cannot make a network namespace (ip netns add): {made.stderr.strip()}")
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def netns_container(netns: str) -> Iterator[Container]:
    """A container booted in `netns`: its 127.0.0.1 is that namespace's (a broker runs there)."""
    yield from booted(writable_sysctl=True, netns=netns)


@pytest.fixture(scope="session")
def deb() -> Path:
    """The package file itself (TQ_DEB, or the newest dist/tq_*.deb), for a test that needs no container. As
    root only, like the others: only as root does `make test` build the .deb, and a stale one is no test."""
    if os.geteuid() != 0:
        skip_or_fail("system tests need root (`make test` builds the .deb only as root)")
    try:
        return built_package()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def booted(writable_sysctl: bool, netns: str | None = None) -> Iterator[Container]:
    reason = cannot_run_reason()
    if reason:
        skip_or_fail(reason)
    built = subprocess.run(["sh", str(HERE / "rootfs.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"tests/system/rootfs.sh failed:\n{built.stderr[-4000:]}", pytrace=False)
    rootfs = built.stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="tq-system-", dir="/var/tmp"))
    root = scratch / f"tq-test-{os.getpid()}"  # also the machine name nspawn uses
    subprocess.run(["cp", "-a", "--reflink=auto", rootfs, str(root)], check=True)
    box = Container(root, scratch / "console.log", writable_sysctl, netns)
    try:
        box.boot()
        yield box
    finally:
        box.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        # nspawn leaves this behind when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{root.name}", ignore_errors=True)


REPORT = pytest.StashKey[list[str]]()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """A figure for the end of the run (the drain rate under journald): printed in the terminal summary."""
    return request.config.stash.setdefault(REPORT, []).append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for line in config.stash.get(REPORT, []):
        terminalreporter.write_line(line)
