"""A name of its own in /etc/hosts for one test: what a name that starts (or stops) resolving looks like to a
daemon, through the system's own resolver (glibc reads the file at each lookup)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HOSTS = Path("/etc/hosts")


@contextlib.contextmanager
def hosts_name() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A fresh name that does not resolve yet, and a function that makes it resolve to an address (the file is
    put back as it was afterwards)."""
    name = f"tq-broker-{uuid.uuid4().hex[:10]}"
    try:
        before = HOSTS.read_text()
        HOSTS.write_text(before)  # (can this test write it at all?)
    except OSError as e:
        pytest.skip(f"cannot write {HOSTS}: {e.strerror}")

    def resolve_to(address: str) -> None:
        HOSTS.write_text(before + ("" if before.endswith("\n") else "\n") + f"{address} {name}\n")

    try:
        yield name, resolve_to
    finally:
        text = HOSTS.read_text()
        HOSTS.write_text("".join(line for line in text.splitlines(keepends=True) if name not in line))
