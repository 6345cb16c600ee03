"""What an attempt cost, in words: for the job's journal line and `tqctl show` (kept apart from protocol.py so
that tqctl stays quick to start)."""

from __future__ import annotations

from typing import Any


def describe(usage: dict[str, Any]) -> str:
    """What an attempt cost, for its journal line and its error: `; cpu 0.12s user 0.01s sys, max rss 12.3 MB`."""
    if not usage:
        return ""
    parts = []
    if "user" in usage or "sys" in usage:
        parts.append(f"cpu {usage.get('user', 0):.3g}s user {usage.get('sys', 0):.3g}s sys")
    if usage.get("max_rss_kb"):
        parts.append(f"max rss {usage['max_rss_kb'] / 1024:.1f} MB")
    if usage.get("signal"):
        parts.append(f"killed by {usage['signal']}")
    elif usage.get("exit") is not None:
        parts.append(f"exit {usage['exit']}")
    return "; " + ", ".join(parts) if parts else ""
