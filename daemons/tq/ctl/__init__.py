"""tqctl: the operator's command line, a thin layer over tq.client.

The commands live by what they act on: jobs.py (submit, result, list, show, cancel, retry; batch.py reads and
checks submit --batch's lines), overview.py (status, workers, queues, schedules, pause, resume, config check),
follow.py (events, watch, metrics), tokens.py (token create, list, revoke); each declares its commands' options
beside their handlers, render.py formats what they print, complete.py completes them in bash.

Exit status: 0 ok, 1 job failed, 2 usage or refused, 3 host not reachable,
4 permission denied, 5 not found, 6 timeout, 7 internal error in tq-host.
(They come from the error codes' table, tq.control.ERRORS.)
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..client import Client, Refused, TqError
from . import follow, jobs, options, overview, render, tokens

# The order `tqctl --help` lists the commands in; each module's COMMANDS add them.
_HELP_ORDER = ("submit", "status", "list", "show", "cancel", "retry", "result", "workers", "pause", "resume",
               "queues", "schedules", "events", "metrics", "watch", "token", "config")


def build_parser() -> argparse.ArgumentParser:
    common = options.Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = options.Parser(prog="tqctl", description="Control tq: submit jobs and look at them.", parents=[common])
    p.add_argument("--config", help="config file (default: $TQ_CONFIG or /etc/tq/tq.toml)")
    p.add_argument("--version", action="version", version=f"tqctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=options.Parser)
    commands = jobs.COMMANDS | overview.COMMANDS | follow.COMMANDS | tokens.COMMANDS
    for name in sorted(commands, key=_HELP_ORDER.index):  # (a command missing from _HELP_ORDER: ValueError)
        commands[name](sub, common)
    sub.add_parser("_complete").add_argument("line")  # for the bash completion; no help=: --help leaves it out
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    if args.command == "_complete":
        return _complete(args.line)
    try:
        _check_utf8(sys.argv[1:] if argv is None else argv)
        if args.command == "config":
            return overview.config_check(args, as_json)
        with Client(config=args.config) as client:
            for problem in client.config_skipped:  # tqctl needs only host.socket: a broken file does not stop it
                render.warning(f"{problem}; skipped: tqctl reads only host.socket (tqctl config check "
                               "validates every file)")
            result: int = args.handler(client, args, as_json)
            return result
    except TqError as e:
        render.error(str(e), as_json, e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _check_utf8(argv: list[str]) -> None:
    """Names, arguments and payloads are UTF-8 text: an argument that is not (Python holds its bytes as lone
    surrogates) is a usage error naming it, not a UnicodeEncodeError when the request is written."""
    for arg in argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            shown = os.fsencode(arg).decode(errors="backslashreplace")
            raise Refused(f"argument '{shown}' is not UTF-8 text (tq takes names, arguments and payloads in "
                          "UTF-8)") from None


def _complete(line: str) -> int:
    """`tqctl _complete -- LINE`, for the bash completion: the words that may follow LINE, one a line (see
    complete.py); exit status complete.FILES asks for file names. Silent whatever happens: an error message
    would land in the middle of the command being typed."""
    from . import complete

    try:
        words = complete.candidates(build_parser(), line)
    except Exception:
        return 0
    if words is None:
        return complete.FILES
    if words:
        print("\n".join(words))
    return 0
