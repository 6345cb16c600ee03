"""tqctl: the operator's command line, a thin layer over tq.client.

The commands live by what they act on: jobs.py (submit, result, list, show; batch.py reads and checks submit
--batch's lines), change.py (cancel, retry), overview.py (status, workers, queues, schedules, pause, resume,
config check), follow.py (events, watch, metrics), tokens.py (token create, list, revoke); each declares its
commands' options beside their handlers, render.py formats what they print, complete.py completes them in bash.

Remote: `--url URL --token-file FILE` (or TQ_URL, TQ_TOKEN_FILE) reaches tq-host through tq-gateway, with the same
output and exit statuses (tq/remote.py); `--ca-file FILE` (TQ_CA_FILE) checks an https gateway against that CA.

Exit status: 0 ok, 1 job failed, 2 usage or refused, 3 host not reachable,
4 permission denied, 5 not found, 6 timeout, 7 internal error in tq-host, 130 interrupted (Ctrl-C).
(They come from the error codes' table, tq.control.ERRORS.)
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..client import Client, Refused, TqError
from ..clienterrors import masked_url
from . import change, follow, jobs, options, overview, render, tokens

# The order `tqctl --help` lists the commands in; each module's COMMANDS add them.
_HELP_ORDER = ("submit", "status", "list", "show", "cancel", "retry", "result", "workers", "pause", "resume",
               "queues", "schedules", "events", "metrics", "watch", "token", "config")


def build_parser() -> argparse.ArgumentParser:
    common = options.Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = options.Parser(prog="tqctl", description="Control tq: submit jobs and look at them.", parents=[common])
    p.add_argument("--config", help="config file (default: $TQ_CONFIG or /etc/tq/tq.toml)")
    p.add_argument("--version", action="version", version=f"tqctl {__version__}")
    p.add_argument("--url", help="reach tq-host through tq-gateway at URL (http://HOST:8790, https://...; default: "
                   "$TQ_URL) instead of its socket; needs --token-file")
    p.add_argument("--token-file", metavar="FILE", help="the file holding the token for --url (tqctl token create "
                   "prints one; default: $TQ_TOKEN_FILE)")
    p.add_argument("--ca-file", metavar="FILE", help="with an https --url: the CA certificate (PEM) the gateway's "
                   "is checked against (default: $TQ_CA_FILE, else the system's CAs)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=options.Parser)
    commands = jobs.COMMANDS | change.COMMANDS | overview.COMMANDS | follow.COMMANDS | tokens.COMMANDS
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
            url = args.url or os.environ.get("TQ_URL")
            if url:  # (no request goes to the gateway: this machine's files are what there is to read)
                render.warning(f"config check reads this machine's configuration files, not those of the tq-host "
                               f"behind {url[:200]}: run it there")
            return overview.config_check(args, as_json)
        with _client(args) as client:
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


def _client(args: argparse.Namespace) -> Client:
    """tq-host's socket, or tq-gateway at --url (TQ_URL) with the token of --token-file (TQ_TOKEN_FILE)."""
    url = args.url or os.environ.get("TQ_URL") or None
    token_file = args.token_file or os.environ.get("TQ_TOKEN_FILE") or None
    if url is None:
        if args.token_file is not None or args.ca_file is not None:
            raise Refused("--token-file and --ca-file go with --url (tq-gateway's URL)")
        return Client(config=args.config)
    if token_file is None:
        raise Refused(f"--url {masked_url(url)} needs --token-file FILE (or TQ_TOKEN_FILE): a file holding the token "
                      "that tqctl token create printed")
    return Client(url=url, token=_token(token_file), ca_file=args.ca_file or os.environ.get("TQ_CA_FILE") or None)


def _token(path: str) -> str:
    """The token in `path` (whitespace around it stripped); a warning if other users may read the file."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096).decode("utf-8", "replace").strip()
    except OSError as e:
        raise Refused(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not text:
        raise Refused(f"the token file {path} is empty (it holds the token that tqctl token create printed)")
    if mode & 0o004:
        render.warning(f"the token file {path} is readable by other users: they may act as its user "
                       f"(chmod o-r {path})")
    return text


def _check_utf8(argv: list[str]) -> None:
    """Names, arguments and payloads are UTF-8 text: an argument that is not (Python holds its bytes as lone
    surrogates) is a usage error naming it, not a UnicodeEncodeError when the request is written."""
    for arg in argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            raw = os.fsencode(arg)
            shown = raw[:60].decode(errors="backslashreplace") + (f"... ({len(raw)} bytes)" if len(raw) > 60 else "")
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
