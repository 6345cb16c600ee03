"""tqctl: the operator's command line, a thin layer over tq.client.

Exit status: 0 ok, 1 job failed, 2 usage or refused, 3 host not reachable,
4 permission denied, 5 not found, 6 timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import Any

from .. import __version__, configfiles, control
from ..client import Client, HostUnreachable, JobTimeout, Refused, TqError
from ..states import FINAL, JobState
from ..usage import describe as describe_usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 already; keep one line
        self.exit(control.EXIT_USAGE, f"{self.prog}: {message}\n")


def _duration(text: str) -> float:
    try:
        return configfiles.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _time(text: str) -> float:
    """An ISO 8601 time (`2026-12-01T09:00:00+01:00`; without an offset, local time): seconds since the epoch."""
    import datetime  # (only --at needs it: tqctl starts faster without)

    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-01T09:00:00+01:00, or "
                                         "2026-12-01 09:00 in local time)") from None


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = _Parser(prog="tqctl", description="Control tq: submit jobs and look at them.", parents=[common])
    p.add_argument("--config", help="config file (default: $TQ_CONFIG or /etc/tq/tq.toml)")
    p.add_argument("--version", action="version", version=f"tqctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("submit", parents=[common], help="submit a job; prints its id (or its result with --wait)")
    s.add_argument("task", nargs="?")
    s.add_argument("args", nargs="*", metavar="ARG")
    s.add_argument("--batch", metavar="FILE", help="submit the jobs in FILE ('-': stdin), one JSON object per line "
                   "with task, args and the options below; prints their ids, one per line")
    s.add_argument("--queue")
    s.add_argument("--priority", type=int)
    s.add_argument("--delay", type=_duration, default=0.0, help="run after this long (e.g. 30s, 5m)")
    s.add_argument("--at", type=_time, metavar="TIME", help="run at this time (ISO 8601; local time without an "
                   "offset); a time past runs at once")
    s.add_argument("--unique", metavar="KEY", help="while a job submitted with KEY is open, print its id and "
                   "create nothing")
    s.add_argument("--then", action="append", metavar="'TASK [ARG...]'", help="a next step: it runs when the one "
                   "before is done, with its result as payload (repeat for more); a step that fails cancels the rest")
    s.add_argument("--after", type=int, metavar="ID", help="wait until job ID is done (cancelled if it is not)")
    s.add_argument("--exchange", metavar="NAME", help="submit through [exchanges.NAME]: one job per bound queue "
                   "that --key matches; prints every id")
    s.add_argument("--key", default="", help="the routing key for --exchange (e.g. orders.created)")
    s.add_argument("--timeout", type=_duration, help="kill an attempt running longer than this")
    s.add_argument("--retries", type=int, help="attempts after the first")
    s.add_argument("--payload", help="payload text, given to a command on stdin ('-' reads stdin)")
    s.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    s.add_argument("--wait-timeout", type=_duration, help="give up waiting after this long (exit 6)")
    s.set_defaults(func=_cmd_submit)

    sub.add_parser("status", parents=[common], help="host, job counts and workers").set_defaults(func=_cmd_status)
    ls = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    ls.set_defaults(func=_cmd_list)
    ls.add_argument("--state", choices=[s.value for s in JobState])
    ls.add_argument("--queue")
    ls.add_argument("--task")
    ls.add_argument("--limit", type=int, default=50)
    c = sub.add_parser("show", parents=[common], help="show one job")
    c.add_argument("id", type=int)
    c.set_defaults(func=_cmd_show)
    for name, text, func in (("cancel", "cancel a job (a running one is stopped first), or all that match",
                              _cmd_cancel),
                             ("retry", "run a dead, failed or cancelled job again, or all that match", _cmd_retry)):
        c = sub.add_parser(name, parents=[common], help=text)
        c.add_argument("id", type=int, nargs="?")
        c.add_argument("--state", choices=[s.value for s in JobState])
        c.add_argument("--task")
        c.add_argument("--queue")
        c.add_argument("--older-than", type=_duration, metavar="AGE", help="submitted at least this long ago")
        c.set_defaults(func=func)
    r = sub.add_parser("result", parents=[common], help="print a job's result (several: one line each, ID: result)")
    r.set_defaults(func=_cmd_result)
    r.add_argument("ids", type=int, nargs="+", metavar="ID")
    r.add_argument("--wait", action="store_true", help="wait until the job (every job, in one request) has finished")
    r.add_argument("--wait-timeout", type=_duration)
    sub.add_parser("workers", parents=[common], help="the workers the host knows").set_defaults(func=_cmd_workers)
    for name, text in (("pause", "dispatch nothing more from QUEUE (submits are taken; running jobs finish)"),
                       ("resume", "dispatch from a paused QUEUE again")):
        q = sub.add_parser(name, parents=[common], help=text)
        q.add_argument("queue", metavar="QUEUE")
        q.set_defaults(func=_cmd_pause)
    sub.add_parser("queues", parents=[common], help="every queue: its jobs by state, oldest queued, paused, "
                   "which workers serve it").set_defaults(func=_cmd_queues)
    sub.add_parser("schedules", parents=[common], help="every schedule: next run, last run and its job"
                   ).set_defaults(func=_cmd_schedules)
    ev = sub.add_parser("events", parents=[common], help="job and worker events: the last ones, or as they happen "
                        "with --follow")
    ev.set_defaults(func=_cmd_events)
    ev.add_argument("--follow", "-f", action="store_true", help="print events as they happen, until interrupted")
    ev.add_argument("--job", type=int, metavar="ID", help="only this job's events")
    ev.add_argument("--task", help="only this task's events")
    ev.add_argument("--queue", help="only this queue's events (and its workers')")
    ev.add_argument("--limit", "-n", type=int, metavar="N", help="how many of the last events first (default: "
                    "100, or 10 with --follow; the host keeps the last 1000)")
    m = sub.add_parser("metrics", parents=[common], help="the host's metrics in the Prometheus text format (--json: "
                       "the host's snapshot they are made from)")
    m.set_defaults(func=_cmd_metrics)
    m.add_argument("--output", "-o", metavar="FILE", help="write them to FILE atomically (for node_exporter's "
                   "textfile collector) instead of printing them")
    w = sub.add_parser("watch", parents=[common], help="show the status line, again whenever events change it")
    w.set_defaults(func=_cmd_watch)
    w.add_argument("--interval", type=_duration, default=1.0, help="at most one line per INTERVAL (default 1s)")
    cfg = sub.add_parser("config", parents=[common], help="configuration")
    cfg.add_argument("action", choices=("check",), help="check: validate the configuration (exit 0 or 2)")
    cfg.set_defaults(func=None)  # it reads the configuration, not the host
    sub.add_parser("_complete").add_argument("line")  # for the bash completion; no help=: --help leaves it out
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    if args.command == "_complete":
        return _complete(args.line)
    try:
        if args.command == "config":
            return _config_check(args, as_json)
        with Client(config=args.config) as client:
            result: int = args.func(client, args, as_json)
            return result
    except TqError as e:
        _error(str(e), as_json, e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _error(message: str, as_json: bool, code: int) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": message, "exit_code": code}))
    print(f"tqctl: {message}", file=sys.stderr)


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=None if not sys.stdout.isatty() else 2, sort_keys=True))


def _config_check(args: argparse.Namespace, as_json: bool) -> int:
    from .. import configload  # the whole validation: only this command needs it

    try:
        cfg = configload.load(args.config)
    except configload.ConfigError as e:
        _error(str(e), as_json, control.EXIT_USAGE)
        return control.EXIT_USAGE
    if as_json:
        _out({"ok": True, "files": list(cfg.files), "tasks": [t.name for t in cfg.tasks]})
    else:
        print(f"configuration ok: {', '.join(cfg.files)} ({len(cfg.tasks)} task(s))")
    return 0


BATCH_CHUNK = 5000  # jobs per request (and per commit) in submit --batch


def _cmd_submit(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.batch is not None:
        return _submit_batch(client, args, as_json)
    if args.task is None:
        raise Refused("submit needs TASK (or --batch FILE)")
    payload = sys.stdin.read() if args.payload == "-" else args.payload
    if args.at is not None and args.delay:
        raise Refused("give --delay or --at, not both")
    if args.then:
        if args.wait or args.exchange is not None:
            raise Refused("--then takes no --wait or --exchange (tqctl result --wait LAST_ID waits for the chain)")
        first = _spec_of(args, payload)
        steps = [first] + [_then(text) for text in args.then]
        ids = client.chain(*steps)
        _out({"ids": ids}) if as_json else print("\n".join(map(str, ids)))
        return 0
    if args.exchange is not None:
        if args.queue is not None or args.wait or args.unique is not None:
            raise Refused("--exchange chooses the queues: it takes no --queue, --wait or --unique")
        ids = client.publish(args.exchange, args.key, args.task, *args.args, priority=args.priority,
                             delay=args.delay, timeout=args.timeout, retries=args.retries, payload=payload, at=args.at)
        _out({"ids": ids}) if as_json else print("\n".join(map(str, ids)))
        return 0
    jid = client.submit(args.task, *args.args, queue=args.queue, priority=args.priority, delay=args.delay,
                        timeout=args.timeout, retries=args.retries, payload=payload, at=args.at, unique=args.unique,
                        after=args.after)
    if not args.wait:
        _out({"id": jid}) if as_json else print(jid)
        return 0
    return _finish(_wait(client, jid, args.wait_timeout), as_json)


def _spec_of(args: argparse.Namespace, payload: str | None) -> dict[str, Any]:
    """The job of `tqctl submit TASK ARG...` with its options, as a job spec."""
    options = {"queue": args.queue, "priority": args.priority, "delay": args.delay or None, "timeout": args.timeout,
               "retries": args.retries, "payload": payload, "at": args.at, "unique": args.unique, "after": args.after}
    return {"task": args.task, "args": list(args.args)} | {k: v for k, v in options.items() if v is not None}


def _then(text: str) -> dict[str, Any]:
    import shlex

    words = shlex.split(text)
    if not words:
        raise Refused("--then needs a task name")
    return {"task": words[0], "args": words[1:]}


def _submit_batch(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """JSON lines in, ids out; each chunk is one request and one commit."""
    source = sys.stdin if args.batch == "-" else open(args.batch, encoding="utf-8")
    ids: list[int] = []
    chunk: list[dict[str, Any]] = []
    with source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                spec = json.loads(line)
            except ValueError as e:
                raise Refused(f"{args.batch}: line {number}: not JSON: {e}") from None
            if not isinstance(spec, dict) or "task" not in spec:
                raise Refused(f"{args.batch}: line {number}: expected an object with a \"task\"")
            chunk.append(spec)
            if len(chunk) == BATCH_CHUNK:
                ids += client.submit_many(chunk)
                chunk = []
    if chunk:
        ids += client.submit_many(chunk)
    if as_json:
        _out({"ids": ids})
    else:
        sys.stdout.write("".join(f"{i}\n" for i in ids))
    return 0


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
        _out(job)
    elif job["state"] == "done":
        print(job["result"])
    else:
        print(f"tqctl: job {job['id']} {job['state']}: {job.get('error') or ''}".rstrip(": "), file=sys.stderr)
    return 0 if job["state"] == "done" else control.EXIT_FAILED


def _cmd_result(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if len(args.ids) > 1:
        return _results(client, args, as_json)
    jid = args.ids[0]
    job = _wait(client, jid, args.wait_timeout) if args.wait else client.get(jid)
    if job["state"] not in FINAL:
        message = f"job {jid} has not finished (it is {job['state']}); use --wait"
        _error(message, as_json, control.EXIT_TIMEOUT)
        return control.EXIT_TIMEOUT
    return _finish(job, as_json)


def _results(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """Several jobs: `ID: result` per line in the order given (failures on stderr); the exit status is the
    worst: 6 if one has not finished, else 1 if one is not done, else 0."""
    ids = list(dict.fromkeys(args.ids))
    if args.wait:
        try:
            jobs = client.wait_many(ids, timeout=args.wait_timeout)
        except JobTimeout as e:
            jobs = e.finished | {i: client.get(i) for i in e.pending}
    else:
        jobs = {i: client.get(i) for i in ids}
    if as_json:
        _out([jobs[i] for i in ids])
    for job in ([] if as_json else [jobs[i] for i in ids]):
        i = job["id"]
        if job["state"] == "done":
            print(f"{i}: {job['result']}")
        elif job["state"] in FINAL:
            print(f"tqctl: job {i} {job['state']}: {job.get('error') or ''}".rstrip(": "), file=sys.stderr)
        else:
            print(f"tqctl: job {i} has not finished (it is {job['state']})", file=sys.stderr)
    states = [jobs[i]["state"] for i in ids]
    if any(state not in FINAL for state in states):
        return control.EXIT_TIMEOUT
    return 0 if all(state == "done" for state in states) else control.EXIT_FAILED


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cmd_list(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    jobs = client.list_jobs(state=args.state, queue=args.queue, task=args.task, limit=args.limit)
    if as_json:
        _out(jobs)
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [["ID", "STATE", "TASK", "QUEUE", "PRIO", "TRIES", "AGE", "WORKER", "RESULT"]]
    for j in jobs:
        outcome = j["result"] if j["state"] == "done" else (j["error"] or "")
        rows.append([str(j["id"]), j["state"], j["task"], j["queue"], str(j["priority"]), str(j["attempts"]),
                     _age(j["created_at"]), j["worker"] or "-", (outcome or "").replace("\n", " ")[:40]])
    _table(rows)
    return 0


def _cmd_show(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    job = client.get(args.id)
    if as_json:
        _out(job)
        return 0
    for key in ("id", "task", "args", "payload", "queue", "priority", "state", "attempts", "retries", "timeout",
                "handler", "unique", "parent", "children", "worker", "submitter", "created_at", "run_at",
                "started_at", "finished_at", "usage", "result", "error"):
        value = job.get(key)
        if key.endswith("_at") and value is not None:
            when = f"{_age(value)} ago" if value <= time.time() else f"in {_age(2 * time.time() - value)}"
            value = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))} ({when})"
        elif key in ("args", "payload", "handler"):
            value = json.dumps(value)
        elif key == "usage":
            value = describe_usage(value).removeprefix("; ") if value else None
        elif key == "children":
            value = " ".join(map(str, value)) if value else None
        print(f"{key + ':':<12} {'-' if value is None else value}")
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The bulk filters given; a usage error with an id beside them, or with neither."""
    filters = {"state": args.state, "task": args.task, "queue": args.queue, "older_than": args.older_than}
    given = {k: v for k, v in filters.items() if v is not None}
    if (args.id is None) == (not given):
        raise Refused(f"{args.command} takes a job ID, or filters (--state --task --queue --older-than), not both")
    return given


def _bulk_done(reply: dict[str, Any], text: str, as_json: bool) -> int:
    if as_json:
        _out({"count": len(reply["ids"]), **reply})
    else:
        refused = f"; {reply['refused']} matching job(s) are not yours to change" if reply["refused"] else ""
        print(text.format(len(reply["ids"])) + refused)
    return 0


def _cmd_cancel(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if filters := _filters(args):
        return _bulk_done(client.cancel_matching(**filters), "cancelled {} job(s)", as_json)
    job = client.cancel(args.id)
    if as_json:
        _out(job)
    elif job["stopping"]:
        print(f"job {args.id} is running on worker {job['worker']}: stopping it; it ends cancelled")
    else:
        print(f"job {args.id} cancelled")
    return 0


def _cmd_retry(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if filters := _filters(args):
        return _bulk_done(client.retry_matching(**filters), "queued {} job(s) again", as_json)
    job = client.retry(args.id)
    _out(job) if as_json else print(f"job {args.id} queued again")
    return 0


def _cmd_status(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    st = client.status()
    if as_json:
        _out(st)
        return 0
    states = st["states"]
    print(f"tq-host {st['version']} (pid {st['pid']}), up {_age(time.time() - st['uptime'])}")
    print("jobs:    " + "  ".join(f"{k} {v}" for k, v in states.items()))
    print(f"workers: {st['workers_live']} live of {st['workers_known']} known")
    print(f"malformed messages dropped: {st['malformed_messages']}")
    for note in st.get("mqueue", {}).get("limited", []):
        print(f"queue limits: {note}")
    return 0


def _cmd_workers(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    workers = client.workers()
    if as_json:
        _out(workers)
        return 0
    if not workers:
        print("no workers have said hello")
        return 0
    rows = [["WORKER", "STATE", "PID", "QUEUES", "UP", "RSS", "CPU", "FDS", "DONE", "FAILED", "JOB", "SEEN"]]
    for w in workers:
        m = w.get("monitor") or {}  # none from a worker of the previous release: what the host itself knows
        job = m.get("job")
        if job:
            text = f"{job['id']} {job['task']}" + (f" (try {job['attempt']})" if job.get("attempt", 1) > 1 else "")
            text += f" {_span(job.get('elapsed_seconds'))}"
            tree = job.get("tree")
            if tree:
                text += f", {tree['processes']} procs {_bytes(tree['rss_bytes'])} cpu {tree['cpu_seconds']:.1f}s"
        else:
            text = str(w["running"] or "-")
        cpu = "-" if m.get("cpu_seconds") is None else f"{m['cpu_seconds']:.1f}s"
        if m.get("cpu_percent") is not None:
            cpu += f" {m['cpu_percent']:.0f}%"
        rows.append([w["instance"], w["state"], str(w["pid"]), ",".join(w["queues"]), _span(m.get("uptime_seconds")),
                     _bytes(m.get("rss_bytes")), cpu, "-" if m.get("fds") is None else str(m["fds"]),
                     str(m.get("jobs_done", w["done"])), str(m.get("jobs_failed", "-")), text,
                     f"{w['seen_ago']:.1f}s ago"])
    _table(rows)
    return 0


def _span(seconds: float | None) -> str:
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


def _bytes(n: int | None) -> str:
    """A size in binary units, short: 812K, 24.1M, 1.2G (`-` when unknown)."""
    if n is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 100 * size else f"{n // size}{unit}"
    return f"{n}B"


def _cmd_pause(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    reply = client.pause(args.queue) if args.command == "pause" else client.resume(args.queue)
    if as_json:
        _out(reply)
    else:
        state = "paused" if reply["paused"] else "resumed"
        print(f"queue {args.queue} {state}" + ("" if reply["changed"] else f" (it already was {state})"))
    return 0


def _cmd_queues(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    queues = client.queues()
    if as_json:
        _out(queues)
        return 0
    rows = [["QUEUE", "QUEUED", "RUNNING", "WAITING", "OLDEST", "PAUSED", "LIMITS", "WORKERS"]]
    for q in queues:
        n = q["states"]
        oldest = "-" if q["oldest_queued_age"] is None else _age(time.time() - q["oldest_queued_age"])
        workers = ",".join(q["workers"]) or ("none: no live worker serves it" if q["unserved"] else "-")
        limits = ", ".join(([f"{q['concurrency']} at once"] if q["concurrency"] else [])
                           + ([f"{q['rate']:g}/s"] if q["rate"] else [])) or "-"
        rows.append([q["queue"], str(n.get("queued", 0)), str(n.get("running", 0)),
                     str(n.get("delayed", 0) + n.get("failed", 0)), oldest, "yes" if q["paused"] else "no",
                     limits, workers])
    _table(rows)
    return 0


def _cmd_schedules(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    schedules = client.schedules()
    if as_json:
        _out(schedules)
        return 0
    if not schedules:
        print("no schedules ([schedules.NAME] in the configuration)")
        return 0

    def local(ts: float | None) -> str:
        return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    rows = [["SCHEDULE", "WHEN", "TASK", "NEXT RUN", "LAST RUN", "LAST JOB"]]
    for sc in schedules:
        when = sc["cron"] or f"every {sc['every']:g}s"
        if sc["timezone"]:
            when += f" ({sc['timezone']})"
        last = "-" if sc["last_job"] is None else f"{sc['last_job']} ({sc['last_state']})"
        rows.append([sc["name"], when, sc["task"], local(sc["next_run"]), local(sc["last_run"]), last])
    _table(rows)
    return 0


def _cmd_events(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    filters: dict[str, Any] = {"job": args.job, "task": args.task, "queue": args.queue}
    limit = max(0, args.limit if args.limit is not None else (10 if args.follow else 100))
    if not args.follow:
        for e in client.events(**filters, limit=limit):
            print(json.dumps(e) if as_json else _event_text(e))
        return 0
    out = sys.stdout.buffer
    stream = client.subscribe(**filters, recent=limit)  # a host that is not there: exit 3 now
    while True:
        try:
            for chunk in stream:
                # --json: the host's lines as they are (no parsing: a reader that keeps up misses less)
                out.write(chunk if as_json else
                          "".join(_event_text(json.loads(line)) + "\n" for line in chunk.splitlines()).encode())
                out.flush()
        except HostUnreachable as e:
            print(f"tqctl: {e}; following again once it is back", file=sys.stderr, flush=True)
        while True:  # until the host is back (a restart, an upgrade): its events meanwhile are not known
            time.sleep(1.0)
            try:
                stream = client.subscribe(**filters)
                break
            except HostUnreachable:
                continue


def _event_text(e: dict[str, Any]) -> str:
    """One event as a line: local time with milliseconds, what happened, where. `e` is as events.as_dict shows
    it (the stream's names; a job event has "job"), or the stream's {"missed": N}."""
    ts = e.get("ts")
    when = "-" if ts is None else time.strftime("%b %d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    if "missed" in e:
        return f"{when}  ... {e['missed']} event(s) missed: this reader fell behind"
    detail = f": {e['detail']}" if e.get("detail") else ""
    if "job" in e:
        where = f"task={e['task']} queue={e['queue']}" + (f" attempt={e['attempt']}" if "attempt" in e else "")
        where += f" worker={e['worker']}" if e.get("worker") else ""
        return f"{when}  job {e['job']} {e['event']}  {where}{detail}"
    return f"{when}  worker {e.get('worker')} {e['event']}  queues={','.join(e.get('queues', []))}{detail}"


def _cmd_metrics(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if as_json and not args.output:
        _out(client.metrics())
        return 0
    try:
        text = client.metrics_text().encode()  # written by tq-host: this process need not load the client library
        up = True
    except HostUnreachable as e:  # still a file that says so (tq_up 0): an alert needs no stale-file rule
        print(f"tqctl: {e}", file=sys.stderr)
        from .. import metrics  # the Prometheus client library, only to say tq_up 0

        text, up = metrics.render(None), False
    if args.output:
        try:
            _write_atomically(args.output, text)
        except OSError as e:
            raise Refused(f"cannot write {args.output}: {e.strerror or e}") from None
    else:
        sys.stdout.buffer.write(text)
    return 0 if up else HostUnreachable.exit_code


def _write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` at once (a temporary file beside it, renamed): node_exporter never reads half a
    file. The temporary name does not end in .prom, so the textfile collector skips it."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # node_exporter runs as its own user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _cmd_watch(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """The status line now, and again after events, at most once per --interval: no polling while idle."""
    with Client(socket_path=client.socket_path) as feed:
        stream = feed.subscribe()
        changed, last = True, 0.0
        while True:
            now = time.monotonic()
            if changed and now - last >= args.interval:
                _status_line(client.status(), as_json)
                changed, last = False, now
            timeout = max(0.0, last + args.interval - now) if changed else None
            if select.select([feed.fileno()], [], [], timeout)[0]:
                next(stream)  # the socket has data: this reads it (and blocks only for the rest of a line)
                changed = True


def _status_line(st: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(st), flush=True)
        return
    s = st["states"]
    print(f"{time.strftime('%H:%M:%S')}  queued {s['queued']}  running {s['running']}  "
          f"waiting {s['delayed'] + s['failed'] + s.get('deferred', 0)}  done {s['done']}  dead {s['dead']}  "
          f"workers {st['workers_live']}", flush=True)


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

