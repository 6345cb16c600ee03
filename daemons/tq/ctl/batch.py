"""`tqctl submit --batch FILE`: JSON lines in, ids out. Each line is checked here before anything is sent, so
that a bad one is named by its line (tq-host's refusal of a request of thousands of jobs could not name it):
only the fields submit knows, each of its type, delay and timeout as seconds or durations ("30s", as the
command-line options take them)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import IO, Any

from .. import bounded, configfiles, control
from ..client import Client, Refused
from . import render

CHUNK = 5000  # jobs per request (and per commit)

_NUMBER, _DURATION = (int, float), (int, float, str)
_PLAIN = frozenset(("task", "args", "payload"))  # a line with no options: nothing to convert
# A line's fields (the submit request's names for tqctl submit's options) and the types each takes; None: any.
FIELDS: dict[str, tuple[type, ...] | None] = {
    "task": (str,), "args": (list,), "payload": None, "queue": (str,), "priority": (int,), "delay": _DURATION,
    "at": _NUMBER, "timeout": _DURATION, "retries": (int,), "unique": (str,), "after": (int,),
}
_KINDS = {(str,): "a string", (list,): "a list", (int,): "a whole number", _NUMBER: "a number of seconds",
          _DURATION: "a number of seconds or a duration such as \"30s\""}


def submit(client: Client, path: str, as_json: bool) -> int:
    """Submit every job of the file (`-`: stdin), a chunk per request; print their ids."""
    ids: list[int] = []
    chunk: list[dict[str, Any]] = []
    lines: list[int] = []  # the line of each job of the chunk
    for number, spec in _specs(path):
        chunk.append(spec)
        lines.append(number)
        if len(chunk) == CHUNK:
            ids += _send(client, path, chunk, lines)
            chunk, lines = [], []
    if chunk:
        ids += _send(client, path, chunk, lines)
    if as_json:
        render.out({"ids": ids})
    else:
        sys.stdout.write("".join(f"{i}\n" for i in ids))
    return 0


def _send(client: Client, path: str, chunk: list[dict[str, Any]], lines: list[int]) -> list[int]:
    """One chunk's request; a task that tq-host does not know (only it knows the tasks) named by its line, as
    the lines' own errors are: tq-host checks the jobs in order, so it is the first line with that task."""
    try:
        return client.submit_many(chunk)
    except Refused as e:
        for spec, number in zip(chunk, lines, strict=True):
            if str(e).startswith(f"unknown task {spec['task']!r};"):
                raise type(e)(f"{path}: line {number}: {e}") from None
        raise


def _specs(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The file's jobs with their line numbers, each checked; Refused names the file and the line of the first
    bad one."""
    try:
        source: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # (closed below)
    except OSError as e:
        raise Refused(f"--batch {path}: {e.strerror}") from None
    with source:  # a line at a time, none longer than a request tq-host reads: an endless one is not held
        for number, raw in enumerate(iter(lambda: source.readline(control.MAX_LINE + 1), b""), 1):
            if len(raw) > control.MAX_LINE:
                raise Refused(f"{path}: line {number}: longer than {bounded.size(control.MAX_LINE)}, the largest "
                              "request tq-host reads")
            try:
                line = raw.decode()
            except UnicodeDecodeError as e:
                raise Refused(f"{path}: line {number}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                              f"{e.start + 1})") from None
            if line.strip():
                try:
                    yield number, spec(line)
                except ValueError as e:
                    raise Refused(f"{path}: line {number}: {e}") from None


def spec(line: str) -> dict[str, Any]:
    """One line's job, its durations in seconds; ValueError says what is wrong with it."""
    try:
        job = control.loads(line)
    except control.Unfit:
        raise
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(job, dict) or "task" not in job:
        raise ValueError("expected an object with a \"task\"")
    if job.keys() <= _PLAIN and type(job["task"]) is str and type(job.get("args", [])) is list:
        return job  # the common line, checked at once (a batch is read at tens of thousands of lines a second)
    for name, value in job.items():
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r} (a line takes {', '.join(FIELDS)})")
        kinds = FIELDS[name]
        if value is None or kinds is None:
            continue
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"{name} must be {_KINDS[kinds]}, not {json.dumps(value)[:40]}")
        if name in ("delay", "timeout"):
            job[name] = _seconds(name, job[name])
        elif name == "retries" and job[name] < 0:
            raise ValueError(f"retries must be 0 or more, not {job[name]}")
    return job


def _seconds(name: str, value: float | str) -> float:
    try:
        seconds = configfiles.parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if name == "timeout" and not seconds >= control.MIN_TIMEOUT:
        raise ValueError(f"timeout must be at least {control.MIN_TIMEOUT}s (1ms), not {value!r}")
    return seconds
