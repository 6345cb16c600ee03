"""System tests: tq on a real systemd (Debian bookworm booted in systemd-nspawn).

Run (as root):  python -m pytest tests/system -v
Needs:          apt-get install debootstrap systemd-container
                plus the built package in dist/ (`make deb`) for the package tests.

What happens: tests/system/rootfs.sh builds a bookworm rootfs once with
debootstrap and caches it outside the repo (TQ_ROOTFS, default
/var/cache/tq-test/bookworm; delete it to rebuild, about 45 s). Each
test module copies it (cp --reflink=auto, about 3 s) to a scratch directory, boots it with
`systemd-nspawn -b --private-network` (about 2 s to "running") and enters it
with `nsenter`; no machined or systemd on the host is needed. The copy is
removed at the end, so the cache stays clean.

The container gets writable /proc/sys (SYSTEMD_NSPAWN_API_VFS_WRITABLE=1)
so that tq's sysctl.d file can raise fs.mqueue.* in the container's own IPC
namespace; the rootfs masks Debian's sysctl.d files that would change
host-wide settings.

Without root or systemd-nspawn every test here is skipped with the reason;
set TQ_REQUIRE_SYSTEM_TESTS=1 (CI does) to turn that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn import HERE, Container, cannot_run_reason


def skip_or_fail(reason: str) -> None:
    message = f"SYSTEM TESTS NOT RUN: {reason}"
    if os.environ.get("TQ_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(message, pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    reason = cannot_run_reason()
    if reason:
        skip_or_fail(reason)
    rootfs = subprocess.run(["sh", str(HERE / "rootfs.sh")], check=True, capture_output=True,
                            text=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="tq-system-", dir="/var/tmp"))
    root = scratch / f"tq-test-{os.getpid()}"  # also the machine name nspawn uses
    subprocess.run(["cp", "-a", "--reflink=auto", rootfs, str(root)], check=True)
    box = Container(root, scratch / "console.log")
    try:
        box.boot()
        yield box
    finally:
        box.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        # nspawn leaves this behind when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{root.name}", ignore_errors=True)
