"""lintian on the built package: no error, and no warning but those that debian/tq.lintian-overrides
overrides with its reason (and no override left that matches nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from nspawn import REPO

pytestmark = pytest.mark.system
OVERRIDES = REPO / "debian/tq.lintian-overrides"


def test_lintian_reports_no_error_or_warning(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian not installed: apt-get install lintian", pytrace=False)
    result = subprocess.run(["lintian", "--display-info", "--fail-on", "error,warning", str(deb)],
                            capture_output=True, text=True, timeout=600)
    findings = [line for line in result.stdout.splitlines()
                if re.match(r"[EW]: |I: \S+: (unused|mismatched)-override", line)]
    assert (findings, result.returncode) == ([], 0), result.stdout + result.stderr


def test_every_lintian_override_says_why() -> None:
    reason = False
    for line in OVERRIDES.read_text().splitlines():
        if line.startswith("#"):
            reason = True
        elif not line.strip():
            reason = False
        else:
            assert reason, f"{OVERRIDES.name}: {line!r} needs a comment above it that gives the reason"
