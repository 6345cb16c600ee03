"""pytest fixtures: each test gets its own real tq suite (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import Suite, temporary_suite


@pytest.fixture
def suite() -> Iterator[Suite]:
    with temporary_suite() as s:
        yield s
