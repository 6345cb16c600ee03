"""What tqctl's command modules share to declare their commands: the parser class, the argument types (durations,
times) and the shapes of a command's registration and handler."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import configfiles, control

HIDDEN = frozenset({"_complete"})  # tqctl's commands for the bash completion alone: never offered to a user


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 already; keep one line
        self.exit(control.EXIT_USAGE, f"{self.prog}: {message}\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """As argparse's, but the choices an invalid one is told of leave out the HIDDEN commands."""
        choices = action.choices
        if choices is not None and value not in choices:
            shown = ", ".join(repr(c) for c in choices if c not in HIDDEN)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {shown})")


if TYPE_CHECKING:
    from collections.abc import Callable

    from ..client import Client

    Subcommands: TypeAlias = argparse._SubParsersAction[Parser]
    # adds one command's parser to tqctl's subcommands; `common` is the parent that gives it --json
    Register: TypeAlias = Callable[[Subcommands, Parser], None]
    # a command: the exit status
    Handler: TypeAlias = Callable[[Client, argparse.Namespace, bool], int]


def duration(text: str) -> float:
    try:
        return configfiles.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_duration(text: str) -> float:
    """A timeout: a duration of at least 1ms (as tq-host takes it)."""
    seconds = duration(text)
    if not seconds >= control.MIN_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at least {control.MIN_TIMEOUT}s (1ms), not {text!r}")
    return seconds


def _ascii_whole(text: str, what: str) -> int:
    """A whole number in ASCII digits (a minus too). Python's int() would take other scripts' digits (Arabic-Indic
    ١٢ as 12, fullwidth ones), "_" and spaces."""
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"expected {what}, not {text[:60]!r}")
    return int(text)


def job_id(text: str) -> int:
    """A job id as tq-host takes it: ASCII digits (a minus too: then no job has it)."""
    return _ascii_whole(text, "a job id (digits 0-9)")


def whole(text: str) -> int:
    """A whole number, negative too (a priority: tq-host checks its range), in ASCII digits as job_id."""
    return _ascii_whole(text, "a whole number (digits 0-9)")


def count(text: str) -> int:
    """A whole number, 0 or more (a limit, retries), in ASCII digits as job_id."""
    n = _ascii_whole(text, "a whole number (digits 0-9)")
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def iso_time(text: str) -> float:
    """An ISO 8601 time (`2026-12-01T09:00:00+01:00`; without an offset, local time): seconds since the epoch."""
    import datetime  # (only --at needs it: tqctl starts faster without)

    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-01T09:00:00+01:00, or "
                                         "2026-12-01 09:00 in local time)") from None
    try:
        return when.timestamp()
    except (ValueError, OverflowError, OSError):  # a local time at the edge of datetime's years (0001, 9999)
        raise argparse.ArgumentTypeError(f"{text!r} is out of range here: give a time between the years 1 and "
                                         "9999, with its offset") from None
