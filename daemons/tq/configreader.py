"""Reading one table of the configuration: typed keys, with errors that name the file, the dotted key and the reason.

configload.py builds the whole configuration with it.
"""

from __future__ import annotations

import re
from typing import Any

from .config import NAME_RE
from .configfiles import ConfigError, parse_duration, parse_size


class Reader:
    """Reads typed keys out of one table, with errors that name file and key."""

    def __init__(self, table: Any, dotted: str, origin: dict[str, str], files: tuple[str, ...]) -> None:
        self.dotted, self.origin, self.files = dotted, origin, files
        if not isinstance(table, dict):
            raise self.error("", "expected a table")
        self.table: dict[str, Any] = table

    def error(self, key: str, reason: str) -> ConfigError:
        full = f"{self.dotted}.{key}" if key and self.dotted else key or self.dotted
        file = self.origin.get(full) or self.origin.get(self.dotted) or (self.files[0] if self.files else "?")
        return ConfigError(file, full, reason)

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.error(key, f"unknown key (known keys: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error(key, f"expected {_type_name(kind)}, got {_type_name(type(value))} {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self.get(key, int, default)
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return value

    def duration(self, key: str, default: float, minimum: float = 0.0) -> float:
        if key not in self.table:
            return default
        try:
            seconds = parse_duration(self.table[key])
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if seconds < minimum:
            raise self.error(key, f"must be at least {minimum:g}s")
        return seconds

    def path(self, key: str, default: str, optional: bool = False) -> str:
        """A file's or directory's absolute path: the daemons run with / as their directory and tqctl in any, so a
        relative one would name a different place for each. `optional`: "" is none."""
        path: str = self.get(key, str, default)
        if not path.startswith("/") and (path or not optional):
            raise self.error(key, f"expected an absolute path (starting with /), got {path!r}")
        return path

    def size(self, key: str) -> int | None:
        if key not in self.table:
            return None
        try:
            return parse_size(self.table[key])
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def principals(self, key: str, default: tuple[str, ...] | None, groups_only: bool = False,
                   users_only: bool = False) -> tuple[str, ...] | None:
        """A list of user names and @group names (group names alone where `groups_only`, user names where
        `users_only`)."""
        value = self.get(key, list, None)
        if value is None:
            return default
        word = r"[a-z_][a-z0-9_.-]{0,31}\$?"
        pattern = re.compile(word if groups_only or users_only else f"@?{word}", re.IGNORECASE)
        if not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
            what = "group names" if groups_only else "user names" if users_only else "user names and @group names"
            raise self.error(key, f"expected a list of {what}, got {value!r}")
        return tuple(value)

    def names(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not value or not all(isinstance(v, str) and NAME_RE.fullmatch(v) for v in value):
            raise self.error(key, "expected a non-empty list of queue names (letters, digits, _ . -)")
        return tuple(value)

    def sub(self, key: str) -> Reader:
        return Reader(self.table.get(key, {}), f"{self.dotted}.{key}" if self.dotted else key, self.origin, self.files)


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(kind, kind.__name__)
