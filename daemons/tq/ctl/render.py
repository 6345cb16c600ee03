"""tqctl's output: JSON, error lines, tables, ages, spans and sizes. Formatting only: no requests."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .. import stderr


def error(message: str, as_json: bool, code: int) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": message, "exit_code": code}))
    stderr.line(f"tqctl: {message}")


def warning(message: str) -> None:
    """A line on stderr that does not stop the command (with --json too: stdout stays JSON)."""
    stderr.line(f"tqctl: warning: {message}")


def out(obj: Any) -> None:
    print(json.dumps(obj, indent=None if not sys.stdout.isatty() else 2, sort_keys=True))


def say(obj: Any, text: str, as_json: bool) -> None:
    """`obj` as JSON with --json, else `text`."""
    if as_json:
        out(obj)
    else:
        print(text)


def out_or_none(items: list[Any], as_json: bool, none: str) -> bool:
    """--json: the items as JSON; no items: the line `none`. True when that is all there is to print (the caller
    prints its table otherwise)."""
    if as_json:
        out(items)
        return True
    if not items:
        print(none)
        return True
    return False


def age(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def local_time(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time in seconds since the epoch as local time (`-` when unknown). One that the platform cannot show (a
    job stored before tq-host bounded run times, far past the year 9999) is shown as the number: never a crash."""
    if ts is None:
        return "-"
    try:
        return time.strftime(fmt, time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f} seconds since the epoch"


def moment(ts: float) -> str:
    """A time as local time, and how long ago or ahead: `2026-12-01 09:00:00 (3h ago)`, `... (in 2d)`."""
    now = time.time()
    if not abs(ts - now) < 1e12:  # (tens of thousands of years, or not a number: no span to speak of)
        return local_time(ts)
    return f"{local_time(ts)} ({age(ts)} ago)" if ts <= now else f"{local_time(ts)} (in {age(2 * now - ts)})"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def span(seconds: float | None) -> str:
    """A duration, short: 45s, 2m05s, 3h12m, 2d04h (`-` when unknown)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    s = int(seconds)
    for big, small, unit, sub in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"), (60, 1, "m", "s")):
        if s >= big:
            return f"{s // big}{unit}{(s % big) // small:02d}{sub}"
    return f"{s}s"


def byte_size(n: int | None) -> str:
    """A size in binary units, short: 812K, 24.1M, 1.2G (`-` when unknown)."""
    if n is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 100 * size else f"{n // size}{unit}"
    return f"{n}B"
