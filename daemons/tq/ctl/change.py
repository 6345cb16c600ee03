"""tqctl's commands that change jobs: cancel and retry, of one job or of every job that matches filters."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .. import control, stderr
from ..client import Client, Refused
from ..states import CANCELLABLE, RETRYABLE, JobState
from . import options, render

if TYPE_CHECKING:
    from .options import Handler, Parser, Register, Subcommands


def _add_bulk(sub: Subcommands, common: Parser, name: str, text: str, handler: Handler,
              able: tuple[JobState, ...]) -> None:
    """cancel and retry: one job by ID, or every job that matches the filters (--state: one it can be in)."""
    c = sub.add_parser(name, parents=[common], help=text)
    c.add_argument("id", type=options.job_id, nargs="?")
    c.add_argument("--state", choices=[s.value for s in able])
    c.add_argument("--task")
    c.add_argument("--queue")
    c.add_argument("--older-than", type=options.duration, metavar="AGE", help="submitted at least this long ago")
    c.set_defaults(handler=handler)


def _add_cancel(sub: Subcommands, common: Parser) -> None:
    _add_bulk(sub, common, "cancel", "cancel a job (a running one is stopped first), or all that match", _cmd_cancel,
              CANCELLABLE)


def _add_retry(sub: Subcommands, common: Parser) -> None:
    _add_bulk(sub, common, "retry", "run a dead, failed or cancelled job again, or all that match (oldest first); a "
              "chain step or --after job waits again for the one before it (refused if that one is dead or "
              "cancelled: retry that one), and a chain step brings back the later steps cancelled with it",
              _cmd_retry, RETRYABLE)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The bulk filters given; a usage error with an id beside them, or with neither."""
    filters = {"state": args.state, "task": args.task, "queue": args.queue, "older_than": args.older_than}
    given = {k: v for k, v in filters.items() if v is not None}
    if args.id is None and not given:
        raise Refused(f"{args.command} needs a job ID, or filters: one or more of --state, --task, --queue, "
                      "--older-than")
    if args.id is not None and given:
        flags = " ".join(f"--{k.replace('_', '-')}" for k in given)
        raise Refused(f"{args.command} takes a job ID or filters, not both (given: {args.id} and {flags})")
    return given


def _bulk_done(reply: dict[str, Any], text: str, as_json: bool) -> int:
    """How many jobs were changed, how many matched but are not the caller's to change, and why others were
    refused. When every matching job was refused the line is an error on stderr, exit 4 (permission denied) if
    none was the caller's, else 2 (refused, as a retry of one job is)."""
    failed = not reply["ids"] and reply["refused"] > 0
    if as_json:
        render.out({"count": len(reply["ids"]), **reply})
    else:
        line = text.format(len(reply["ids"]))
        if reply["not_yours"]:
            line += f"; {reply['not_yours']} matching job(s) are not yours to change"
        if others := reply["refused"] - reply["not_yours"]:
            line += f"; {others} refused: " + "; ".join(reply["reasons"]) + ("; ..." if others > len(reply["reasons"])
                                                                              else "")
        if failed:
            stderr.line(f"tqctl: {line}")
        else:
            print(line)
    if not failed:
        return 0
    return control.EXIT_PERMISSION if reply["not_yours"] == reply["refused"] else control.EXIT_USAGE


def _cmd_cancel(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if filters := _filters(args):
        return _bulk_done(client.cancel_matching(**filters), "cancelled {} job(s)", as_json)
    job = client.cancel(args.id)
    if as_json:
        render.out(job)
    elif job["stopping"]:
        print(f"job {args.id} is running on worker {job['worker']}: stopping it; it ends cancelled")
    else:
        print(f"job {args.id} cancelled")
    return 0


def _cmd_retry(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if filters := _filters(args):
        return _bulk_done(client.retry_matching(**filters), "queued {} job(s) again", as_json)
    job = client.retry(args.id)
    again = f"job {args.id} queued again" if job["state"] == "queued" else \
        f"job {args.id} deferred again: it waits for job {job['parent']}"
    if later := job["later"]:
        again += f", with {len(later)} later step{'s' if len(later) > 1 else ''} of its chain ({_ids(later)})"
    render.say(job, again, as_json)
    return 0


def _ids(ids: list[int]) -> str:
    return " ".join(map(str, ids))


COMMANDS: dict[str, Register] = {"cancel": _add_cancel, "retry": _add_retry}
