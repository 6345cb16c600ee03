"""tqctl's commands on jobs: submit (one, --batch, --then, --exchange, --wait), result, list, show, cancel and
retry; each command's options beside its handler."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import bounded, control, stderr
from ..client import Client, JobTimeout, NotFound, Refused, TqError
from ..states import FINAL, JobState
from ..usage import describe as describe_usage
from . import batch, options, render, visible

if TYPE_CHECKING:
    from .options import Parser, Register, Subcommands

# submit's options for one job (dest: as the user writes it), which --batch takes from each line instead
_ONE_JOB = {"task": "TASK", "args": "ARG", "queue": "--queue", "priority": "--priority", "delay": "--delay",
            "at": "--at", "unique": "--unique", "then": "--then", "after": "--after", "exchange": "--exchange",
            "key": "--key", "timeout": "--timeout", "retries": "--retries", "payload": "--payload", "wait": "--wait",
            "wait_timeout": "--wait-timeout"}


def _add_submit(sub: Subcommands, common: Parser) -> None:
    s = sub.add_parser("submit", parents=[common], help="submit a job; prints its id (or its result with --wait)")
    s.add_argument("task", nargs="?")
    s.add_argument("args", nargs="*", metavar="ARG")
    s.add_argument("--batch", metavar="FILE", help="submit the jobs in FILE ('-': stdin), one JSON object per line "
                   "with task, args and the options below; prints their ids, one per line")
    s.add_argument("--queue")
    s.add_argument("--priority", type=options.whole, metavar="N")
    s.add_argument("--delay", type=options.duration, help="run after this long (e.g. 30s, 5m)")
    s.add_argument("--at", type=options.iso_time, metavar="TIME", help="run at this time (ISO 8601; local time "
                   "without an offset); a time past runs at once")
    s.add_argument("--unique", metavar="KEY", help="while a job submitted with KEY is open, print its id, create "
                   "nothing and say so on stderr (--json: \"existing\": true)")
    s.add_argument("--then", action="append", metavar="'TASK [ARG...]'", help="a next step: it runs when the one "
                   "before is done, with its result as payload (repeat for more); a step that ends dead or cancelled "
                   "cancels the rest. The other options are the first step's (each later one takes its task's "
                   "settings); with --unique, an open job with KEY answers for the whole chain")
    s.add_argument("--after", type=options.job_id, metavar="ID",
                   help="wait until job ID is done (cancelled if it is not)")
    s.add_argument("--exchange", metavar="NAME", help="submit through [exchanges.NAME]: one job per bound queue "
                   "that --key matches; prints every id")
    s.add_argument("--key", help="the routing key for --exchange (e.g. orders.created)")
    s.add_argument("--timeout", type=options.positive_duration, help="kill an attempt running longer than this")
    s.add_argument("--retries", type=options.count, help="attempts after the first")
    s.add_argument("--payload", help="payload text, given to a command on stdin ('-' reads stdin)")
    s.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    s.add_argument("--wait-timeout", type=options.duration, help="give up waiting after this long (exit 6)")
    s.set_defaults(handler=_cmd_submit)


def _cmd_submit(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.batch is not None:
        given = [flag for dest, flag in _ONE_JOB.items() if _given(getattr(args, dest))]
        if given:
            raise Refused(f"--batch takes each job's task and options from its line: not {', '.join(given)}")
        return batch.submit(client, args.batch, as_json)
    _check_submit(args)
    payload = _stdin_text() if args.payload == "-" else args.payload
    if args.then:
        if args.wait or args.exchange is not None:
            raise Refused("--then takes no --wait or --exchange (tqctl result --wait LAST_ID waits for the chain)")
        first = _spec_of(args, payload)
        steps = [first] + [_then(text) for text in args.then]
        ids, existing = client.submit_chain(*steps)
        if existing:
            stderr.line(f"tqctl: {_held(args, ids[0])}: it and its chain ({' '.join(map(str, ids))}) answer for "
                        "this submit, nothing new was submitted")
        render.say({"ids": ids} if args.unique is None and not existing else {"ids": ids, "existing": existing},
                   "\n".join(map(str, ids)), as_json)
        return 0
    if args.exchange is not None:
        if args.queue is not None or args.wait or args.unique is not None:
            raise Refused("--exchange chooses the queues: it takes no --queue, --wait or --unique")
        ids = client.publish(args.exchange, args.key or "", args.task, *args.args, priority=args.priority,
                             delay=args.delay or 0.0, timeout=args.timeout, retries=args.retries, payload=payload,
                             at=args.at, after=args.after)
        render.say({"ids": ids}, "\n".join(map(str, ids)), as_json)
        return 0
    jid, existing = client.submit_spec(_spec_of(args, payload))
    if existing:  # (stdout stays the id alone, for scripts)
        stderr.line(f"tqctl: {_held(args, jid)}: it answers for this submit, nothing new was submitted")
    if not args.wait:
        render.say({"id": jid} if args.unique is None and not existing else {"id": jid, "existing": existing},
                   str(jid), as_json)
        return 0
    try:
        job = _wait(client, jid, args.wait_timeout)
    except KeyboardInterrupt:  # the job stays submitted: say which, or it cannot be found again
        stderr.line(f"tqctl: interrupted; job {jid} stays submitted (tqctl result --wait {jid})")
        raise
    except (JobTimeout, NotFound):  # (the message names the job)
        raise
    except TqError as e:  # tq-host restarted, the gateway refused the wait: a script must not submit it again
        raise type(e)(f"{e}; job {jid} stays submitted (tqctl result --wait {jid})") from None
    return _finish(job, as_json)


def _held(args: argparse.Namespace, jid: int) -> str:
    """The open job that answered a submit: by its --unique KEY, or by its task's unique = true (task and args)."""
    if args.unique is not None:
        return f"job {jid} was open with unique key {args.unique}"
    return f"job {jid} ({args.task} {json.dumps(list(args.args), ensure_ascii=False)}) is open and its task has " \
           "unique = true"


def _given(value: object) -> bool:
    """An option given on the command line: submit's defaults are None, False and [] (so 0 and "" count)."""
    return value is not None and value is not False and value != []


def _check_submit(args: argparse.Namespace) -> None:
    """Usage errors of a submit of one job (or a chain): options that it would ignore, or that exclude another."""
    if args.task is None:
        raise Refused("submit needs TASK (or --batch FILE)")
    if args.at is not None and args.delay:
        raise Refused("give --delay or --at, not both")
    if args.key is not None and args.exchange is None:
        raise Refused("--key is the routing key of a submit through an exchange: give --exchange NAME with it")
    if args.wait_timeout is not None and not args.wait:
        raise Refused("--wait-timeout goes with --wait (tqctl result --wait --wait-timeout T ID waits for a job)")


def _stdin_text() -> str:
    """`--payload -`: stdin, which must be UTF-8 text, and no more than a job can carry (read no further)."""
    try:
        data = bounded.read(sys.stdin.buffer, control.MAX_MESSAGE_SIZE)
    except bounded.TooLarge as e:
        raise Refused(f"--payload -: stdin is {e}, the largest job (mqueue.max_message_size) there can be"
                      ) from None
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise Refused(f"--payload -: stdin is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def _spec_of(args: argparse.Namespace, payload: str | None) -> dict[str, Any]:
    """The job of `tqctl submit TASK ARG...` with its options, as a job spec."""
    fields = {"queue": args.queue, "priority": args.priority, "delay": args.delay or None, "timeout": args.timeout,
              "retries": args.retries, "payload": payload, "at": args.at, "unique": args.unique, "after": args.after}
    return {"task": args.task, "args": list(args.args)} | {k: v for k, v in fields.items() if v is not None}


def _then(text: str) -> dict[str, Any]:
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as e:
        raise Refused(f"--then {text!r}: {e} (quote as in a shell)") from None
    if not words:
        raise Refused("--then needs a task name")
    return {"task": words[0], "args": words[1:]}


def _wait(client: Client, jid: int, timeout: float | None) -> dict[str, Any]:
    """Wait for a job, showing its state on a terminal while it takes long."""
    if not sys.stderr.isatty():
        return client.wait(jid, timeout=timeout)
    start = time.monotonic()
    try:
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            step = 1.0 if left is None else max(0.0, min(1.0, left))
            try:
                return client.wait(jid, timeout=step)
            except JobTimeout:
                if left is not None and left <= step:
                    raise
            job = client.get(jid)
            print(f"\rjob {jid}: {job['state']}, attempt {job['attempts']}, "
                  f"{time.monotonic() - start:.0f}s ", end="", file=sys.stderr, flush=True)
    finally:
        if time.monotonic() - start >= 1.0:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _finish(job: dict[str, Any], as_json: bool) -> int:
    """Print a finished job's result; exit 1 unless it is done."""
    if as_json:
        render.out(job)
    elif job["state"] == "done":
        print(job["result"])
    else:
        stderr.line(_failure(job))
    return 0 if job["state"] == "done" else control.EXIT_FAILED


def _failure(job: dict[str, Any]) -> str:
    """A job that ended other than done, as one error line: its error (a stderr tail of many lines) escaped."""
    error = visible.line(job.get("error") or "")
    if error.startswith(job["state"]):  # "cancelled by uid 0 (root)": the state once
        return f"tqctl: job {job['id']} {error}"
    return f"tqctl: job {job['id']} {job['state']}: {error}".rstrip(": ")


def _add_result(sub: Subcommands, common: Parser) -> None:
    r = sub.add_parser("result", parents=[common], help="print a job's result (several: one line each, ID: result)")
    r.set_defaults(handler=_cmd_result)
    r.add_argument("ids", type=options.job_id, nargs="+", metavar="ID")
    r.add_argument("--wait", action="store_true", help="wait until the job (every job, in one request) has finished")
    r.add_argument("--wait-timeout", type=options.duration)


def _cmd_result(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if len(args.ids) > 1:
        return _results(client, args, as_json)
    jid = args.ids[0]
    job = _wait(client, jid, args.wait_timeout) if args.wait else client.get(jid)
    if job["state"] not in FINAL:
        message = f"job {jid} has not finished (it is {job['state']}); use --wait"
        render.error(message, as_json, control.EXIT_TIMEOUT)
        return control.EXIT_TIMEOUT
    return _finish(job, as_json)


def _results(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """Several jobs: `ID: result` per line in the order given (failures on stderr, an id no job has among them);
    the exit status is the worst: 6 if one has not finished, else 5 if one is no job, else 1 if one is not done,
    else 0."""
    ids = list(dict.fromkeys(args.ids))
    jobs, missing = _jobs_of(client, ids, args.wait, args.wait_timeout)
    if as_json:
        render.out([jobs[i] if i in jobs else _no_job(i) for i in ids])
    for i in ([] if as_json else ids):
        job = jobs.get(i)
        if job is None:
            stderr.line(f"tqctl: no job {i}")
        elif job["state"] == "done":
            print(f"{i}: {job['result']}")
        elif job["state"] in FINAL:
            stderr.line(_failure(job))
        else:
            stderr.line(f"tqctl: job {i} has not finished (it is {job['state']})")
    states = [job["state"] for job in jobs.values()]
    if any(state not in FINAL for state in states):
        return control.EXIT_TIMEOUT
    if missing:
        return control.EXIT_NOT_FOUND
    return 0 if all(state == "done" for state in states) else control.EXIT_FAILED


def _no_job(job_id: int) -> dict[str, Any]:
    """--json: an id no job has, in the list of jobs (an error as tqctl's --json gives one, with its id)."""
    return {"id": job_id, "ok": False, "error": f"no job {job_id}", "exit_code": control.EXIT_NOT_FOUND}


def _jobs_of(client: Client, ids: list[int], wait: bool, timeout: float | None) -> tuple[dict[int, dict[str, Any]],
                                                                                           set[int]]:
    """The jobs of `ids` by id (with `wait`: once finished, or as they are at `timeout`), and the ids no job has.
    tq-host refuses a wait for several ids when one is no job: those are then asked for one by one and left out
    of the wait (the common case, every id a job, stays one request)."""
    if not wait:
        return _each(client, ids)
    missing: set[int] = set()
    while present := [i for i in ids if i not in missing]:
        try:
            return client.wait_many(present, timeout=timeout), missing
        except JobTimeout as e:
            return e.finished | {i: client.get(i) for i in e.pending}, missing
        except NotFound:
            _found, gone = _each(client, present)
            if not gone:  # (no id is missing now: the refusal stands)
                raise
            missing |= gone
    return {}, missing


def _each(client: Client, ids: list[int]) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Each job of `ids` as it is now, by id; and the ids no job has."""
    jobs: dict[int, dict[str, Any]] = {}
    missing: set[int] = set()
    for i in ids:
        try:
            jobs[i] = client.get(i)
        except NotFound:
            missing.add(i)
    return jobs, missing


def _add_list(sub: Subcommands, common: Parser) -> None:
    ls = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    ls.set_defaults(handler=_cmd_list)
    ls.add_argument("--state", choices=[s.value for s in JobState])
    ls.add_argument("--queue")
    ls.add_argument("--task")
    ls.add_argument("--limit", type=options.count, default=50)
    ls.add_argument("--after", type=options.job_id, metavar="ID",
                    help="only jobs below id ID (the next page: the last id shown)")


def _cmd_list(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    jobs = client.list_jobs(state=args.state, queue=args.queue, task=args.task, limit=args.limit, after=args.after)
    if render.out_or_none(jobs, as_json, "no jobs"):
        return 0
    rows = [["ID", "STATE", "TASK", "QUEUE", "PRIO", "TRIES", "AGE", "WORKER", "RESULT"]]
    for j in jobs:
        outcome = j["result"] if j["state"] == "done" else (j["error"] or "")
        rows.append([str(j["id"]), j["state"], j["task"], j["queue"], str(j["priority"]), str(j["attempts"]),
                     render.age(j["created_at"]), j["worker"] or "-", visible.line((outcome or "")[:40])])
    render.table(rows)
    return 0


def _add_show(sub: Subcommands, common: Parser) -> None:
    c = sub.add_parser("show", parents=[common], help="show one job")
    c.add_argument("id", type=options.job_id)
    c.set_defaults(handler=_cmd_show)


def _cmd_show(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    job = client.get(args.id)
    if as_json:
        render.out(job)
        return 0
    for key in ("id", "task", "args", "payload", "queue", "priority", "state", "attempts", "retries", "timeout",
                "handler", "unique", "parent", "children", "worker", "submitter", "created_at", "run_at",
                "started_at", "finished_at", "usage", "result", "error"):
        value = job.get(key)
        if key.endswith("_at") and value is not None:
            value = render.moment(value)
        elif key in ("args", "payload", "handler"):
            value = json.dumps(value)
        elif key == "usage":
            value = describe_usage(value).removeprefix("; ") if value else None
        elif key == "children":
            value = " ".join(map(str, value)) if value else None
        elif isinstance(value, str):  # result, error, unique: the submitter's text
            value = visible.lines(value)
        print(f"{key + ':':<12} {'-' if value is None else value}")
    return 0


COMMANDS: dict[str, Register] = {"submit": _add_submit, "list": _add_list, "show": _add_show, "result": _add_result}
