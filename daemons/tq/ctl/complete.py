"""tqctl's bash completion: the words that may come next on a command line.

/usr/share/bash-completion/completions/tqctl runs `tqctl _complete -- LINE` (LINE: the command line up to
the cursor) and offers what it prints, one word a line. The commands, options and choices come from tqctl's
own parser, so that the completion knows a new command as soon as tqctl does; task and queue names come from
the running host (through tq-gateway when the line, or TQ_URL, gives --url), and from the configuration's files,
which is all there is when the host does not answer.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from .. import configfiles
from ..client import Client, TqError

FILES = 1  # `tqctl _complete` exits with this to ask the shell for file names (--config FILE, --batch FILE)
HOST_TIMEOUT = 2.0  # seconds: a host that does not answer in time is left out, the shell must not hang
WHERE = ("config", "url", "token_file", "ca_file")  # tqctl's options that say which host to ask for names
Names = Callable[[str, dict[str, str]], list[str]]


def candidates(parser: argparse.ArgumentParser, line: str, names: Names | None = None) -> list[str] | None:
    """The words that may replace the last word of `line` (None: file names), trimmed as bash splits words
    at `=` and `:` (`--queue=de` completes `de`). `names(kind, where)` gives "tasks" or "queues", `where` being
    the WHERE options the line gives (by dest)."""
    words = split(line)
    current, pending, taken = parser, None, 0
    where: dict[str, str] = {}
    for word in words[1:-1]:
        if pending is not None:
            if pending.dest in WHERE:
                where[pending.dest] = word
            pending = None
        elif word.startswith("-") and word != "-":
            option, eq, value = word.partition("=")
            action = current._option_string_actions.get(option)
            if action is not None and action.nargs != 0 and not eq:
                pending = action
            elif action is not None and action.dest in WHERE:
                where[action.dest] = value
        elif isinstance(_positional(current, taken), argparse._SubParsersAction) and word in _commands(current):
            current, taken = _commands(current)[word], 0
        else:
            taken += 1
    found = _next(current, words[-1], pending, taken, lambda kind: (names or host_names)(kind, where))
    if found is None:
        return None
    start = _bash_word_start(words[-1])
    return [w[start:] for w in found if w.startswith(words[-1])]


def _next(parser: argparse.ArgumentParser, word: str, pending: argparse.Action | None, taken: int,
          names: Callable[[str], list[str]]) -> list[str] | None:
    if pending is not None:
        return _values(pending, names)
    if word.startswith("--") and "=" in word:
        option = word.partition("=")[0]
        action = parser._option_string_actions.get(option)
        values = _values(action, names) if action is not None and action.nargs != 0 else []
        return None if values is None else [f"{option}={v}" for v in values]
    if word.startswith("-"):
        return sorted(o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings)
    action = _positional(parser, taken)
    if isinstance(action, argparse._SubParsersAction):
        return [c.dest for c in action._choices_actions]  # a command added without help= is not offered
    return [] if action is None else _values(action, names)


def _values(action: argparse.Action, names: Callable[[str], list[str]]) -> list[str] | None:
    if action.choices is not None:
        return [str(c) for c in action.choices]
    if action.metavar == "FILE" or action.dest == "config":
        return None
    if action.dest in ("task", "then"):
        return names("tasks")
    if action.dest == "queue":
        return names("queues")
    return []


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positional(parser: argparse.ArgumentParser, taken: int) -> argparse.Action | None:
    """The positional argument that the next word fills when `taken` words have filled those before it."""
    for action in parser._actions:
        if action.option_strings:
            continue
        if action.nargs in ("*", "+", argparse.REMAINDER, argparse.PARSER):
            return action
        taken -= action.nargs if isinstance(action.nargs, int) else 1
        if taken < 0:
            return action
    return None


def split(line: str) -> list[str]:
    """A command line's words as the shell would pass them, the last one being the word under the cursor
    (empty after a space); an unterminated quote is closed."""
    for closing in ("", "'", '"'):
        try:
            words = shlex.split(line + closing)
            break
        except ValueError:
            continue
    else:
        words = line.split()
    return [*words, ""] if not line or line[-1].isspace() or not words else words


def _bash_word_start(word: str) -> int:
    """Where bash's own idea of the current word starts in `word`: bash splits at `=` and `:`
    (COMP_WORDBREAKS), a run of them being a word of its own."""
    match = re.search(r"([=:]+|[^=:]*)$", word)
    return match.start() if match else 0


def host_names(kind: str, where: dict[str, str]) -> list[str]:
    """Task or queue names: the configuration's, and the running host's (its queues, and the tasks of its
    latest jobs: a task that a pattern such as `[tasks."#"]` serves has no table of its own)."""
    found = configured_names(kind, where.get("config"))
    try:
        with _client(where) as client:
            if kind == "queues":
                found |= {str(q["queue"]) for q in client.queues()}
            else:
                found |= {str(j["task"]) for j in client.list_jobs(limit=200)}
    except (TqError, OSError):
        pass
    return sorted(found)


def _client(where: dict[str, str]) -> Client:
    """The host tqctl would ask with these options: its socket, or tq-gateway at --url (TQ_URL) with the token
    of --token-file (TQ_TOKEN_FILE)."""
    url = where.get("url") or os.environ.get("TQ_URL")
    if not url:
        return Client(config=where.get("config"), timeout=HOST_TIMEOUT)
    with open(where.get("token_file") or os.environ.get("TQ_TOKEN_FILE") or "", encoding="utf-8") as f:
        token = f.read(4096).strip()
    return Client(url=url, token=token, ca_file=where.get("ca_file") or os.environ.get("TQ_CA_FILE") or None,
                  timeout=HOST_TIMEOUT)


def configured_names(kind: str, config: str | None) -> set[str]:
    """The names the configuration's files give, read without validating them (tq-host does that)."""
    try:
        merged = configfiles.read_files(config, skipped=[])[0]  # what parses
    except (configfiles.ConfigError, OSError):
        return set()
    tasks = _table(merged, "tasks")
    if kind == "tasks":
        return {name for name in tasks if "*" not in name and "#" not in name}
    worker = _table(merged, "worker")
    queues = {"default"}  # a task's queue when it names none
    queues |= set(_table(merged, "queues"))
    for table in [worker, *(t for t in worker.values() if isinstance(t, dict))]:
        listed = table.get("queues")
        queues |= {q for q in listed if isinstance(q, str)} if isinstance(listed, list) else set()
    for table in [*tasks.values(), *_table(merged, "schedules").values()]:
        if isinstance(table, dict) and isinstance(table.get("queue"), str):
            queues.add(table["queue"])
    for exchange in _table(merged, "exchanges").values():
        bindings = exchange.get("bindings", ()) if isinstance(exchange, dict) else ()
        queues |= {b["queue"] for b in bindings if isinstance(b, dict) and isinstance(b.get("queue"), str)}
    return queues


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}
