"""tests/system/rootfs.sh takes its Debian mirror from the machine's own apt sources, never a name of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOTFS_SH = Path(__file__).resolve().parents[1] / "system" / "rootfs.sh"


def mirror(apt_etc: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TQ_MIRROR"} | {"TQ_APT_ETC": str(apt_etc)}
    out = subprocess.run(["sh", str(ROOTFS_SH), "--mirror"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def apt_etc(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_a_deb822_release_entry_is_taken_not_security_nor_a_disabled_one(apt_etc: Path) -> None:
    (apt_etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://off.mirror.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://local.mirror.invalid/debian http://second.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert mirror(apt_etc) == "http://local.mirror.invalid/debian"


def test_the_one_line_format_is_read_with_options(apt_etc: Path) -> None:
    (apt_etc / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb http://proxy.invalid:3142/security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://proxy.invalid:3142/debian bookworm main\n")
    assert mirror(apt_etc) == "http://proxy.invalid:3142/debian"


def test_no_archive_in_the_sources_is_a_clear_error(apt_etc: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TQ_MIRROR"} | {
        "TQ_APT_ETC": str(apt_etc), "TQ_ROOTFS": str(apt_etc / "rootfs")}
    out = subprocess.run(["sh", str(ROOTFS_SH)], env=env, capture_output=True, text=True)
    if "debootstrap not installed" in out.stderr:
        pytest.skip("debootstrap is not installed here")
    assert out.returncode == 1 and "no Debian archive" in out.stderr and "TQ_MIRROR" in out.stderr
