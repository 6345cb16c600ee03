"""tqctl's commands that follow the host: events (the last ones, or --follow), watch (the status line again
when events change it) and metrics (Prometheus text, printed or written to a file for node_exporter)."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import bounded, stderr
from ..client import Client, HostUnreachable, Refused
from . import options, render

RECENT = 1000  # events the host keeps (host/stream.py): all of them are asked for after a restart

if TYPE_CHECKING:
    from .options import Parser, Register, Subcommands


def _add_events(sub: Subcommands, common: Parser) -> None:
    ev = sub.add_parser("events", parents=[common], help="job and worker events: the last ones, or as they happen "
                        "with --follow")
    ev.set_defaults(handler=_cmd_events)
    ev.add_argument("--follow", "-f", action="store_true", help="print events as they happen, until interrupted")
    ev.add_argument("--job", type=options.job_id, metavar="ID", help="only this job's events")
    ev.add_argument("--task", help="only this task's events")
    ev.add_argument("--queue", help="only this queue's events (and its workers')")
    ev.add_argument("--limit", "-n", type=options.count, metavar="N", help="how many of the last events first "
                    "(default: 100, or 10 with --follow; the host keeps the last 1000)")


def _cmd_events(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    filters: dict[str, Any] = {"job": args.job, "task": args.task, "queue": args.queue}
    limit = max(0, args.limit if args.limit is not None else (10 if args.follow else 100))
    if not args.follow:
        for e in client.events(**filters, limit=limit):
            print(json.dumps(e) if as_json else _event_text(e))
        return 0
    out = sys.stdout.buffer
    last = time.time()  # the time of the last event printed (or of the start): where a replay takes up
    stream = client.subscribe(**filters, recent=limit)  # a host that is not there: exit 3 now
    while True:
        try:
            for chunk in stream:
                # --json: the host's lines as they are (no parsing: a reader that keeps up misses less)
                if as_json:
                    out.write(chunk)
                    last = max(last, _last_time(chunk, last))
                else:
                    events = [json.loads(line) for line in chunk.splitlines()]
                    out.write("".join(_event_text(e) + "\n" for e in events).encode())
                    last = max([last, *(e["ts"] for e in events if "ts" in e)])
                out.flush()
        except HostUnreachable as e:
            stderr.line(f"tqctl: {e}; following again once it is back")
        while True:  # until the host is back (a restart, an upgrade): then what it kept since `last`, and the gap
            time.sleep(1.0)
            try:
                stream = client.subscribe(**filters, recent=RECENT, after=last)
                break
            except HostUnreachable:
                continue
        stderr.line("tqctl: following again")


def _last_time(chunk: bytes, last: float) -> float:
    """The time of the last event in a chunk of JSON lines (`last` if it has none: a `{"missed": ...}` line)."""
    for line in reversed(chunk.splitlines()):
        ts = json.loads(line).get("ts")
        if ts is not None:
            return float(ts)
    return last


def _event_text(e: dict[str, Any]) -> str:
    """One event as a line: local time with milliseconds, what happened, where. `e` is as events.as_dict shows
    it (the stream's names; a job event has "job"), or the stream's {"missed": N}."""
    when = _clock(e.get("ts"))
    if "missed" in e:
        if e["missed"] is None:  # a replay after a host restart: how many is not known
            return (f"{when}  ... event(s) missed between {_clock(e.get('since'))} and {_clock(e.get('until'))}: "
                    f"{e.get('reason', 'tq-host was not reachable')} (how many is not known)")
        return f"{when}  ... {e['missed']} event(s) missed: {e.get('reason', 'this reader fell behind')}"
    detail = f": {e['detail']}" if e.get("detail") else ""
    if "job" in e:
        where = f"task={e['task']} queue={e['queue']}" + (f" attempt={e['attempt']}" if "attempt" in e else "")
        where += f" worker={e['worker']}" if e.get("worker") else ""
        return f"{when}  job {e['job']} {e['event']}  {where}{detail}"
    return f"{when}  worker {e.get('worker')} {e['event']}  queues={','.join(e.get('queues', []))}{detail}"


def _clock(ts: float | None) -> str:
    """Local time with milliseconds."""
    if ts is None or not abs(ts) < 1e15:
        return render.local_time(ts)
    return render.local_time(ts, "%b %d %H:%M:%S") + f".{int(ts * 1000) % 1000:03d}"


def _add_metrics(sub: Subcommands, common: Parser) -> None:
    m = sub.add_parser("metrics", parents=[common], help="the host's metrics in the Prometheus text format (--json: "
                       "the host's snapshot they are made from)")
    m.set_defaults(handler=_cmd_metrics)
    m.add_argument("--output", "-o", metavar="FILE", help="write them to FILE atomically (for node_exporter's "
                   "textfile collector) instead of printing them; FILE is a regular file or new (a symbolic link, "
                   "device or FIFO is refused)")


def _cmd_metrics(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.output is not None and (problem := _output_problem(args.output)) is not None:
        raise Refused(problem)
    if as_json and args.output is None:
        render.out(client.metrics())
        return 0
    try:
        text = client.metrics_text().encode()  # written by tq-host: this process need not load the client library
        up = True
    except HostUnreachable as e:  # still a file that says so (tq_up 0): an alert needs no stale-file rule
        stderr.line(f"tqctl: {e}")
        from .. import metrics  # the Prometheus client library, only to say tq_up 0

        text, up = metrics.render(None), False
    if args.output is not None:
        try:
            _write_atomically(args.output, text)
        except OSError as e:
            raise Refused(f"cannot write {args.output}: {e.strerror or e}") from None
    else:
        sys.stdout.buffer.write(text)
    return 0 if up else HostUnreachable.exit_code


def _output_problem(path: str) -> str | None:
    """Why `--output path` is refused: no name, or a path that is there and is not a regular file. The file is
    replaced by a rename, which would put a regular file in place of a device (/dev/full), a FIFO or a symbolic
    link; a link is not followed either: as root (tq-metrics.service) a link would point the write anywhere."""
    import stat

    if not path:
        return "--output needs a file name (without --output the metrics are printed)"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None  # a new file
    except OSError as e:
        return f"cannot write {path}: {e.strerror or e}"
    if stat.S_ISLNK(mode):
        return (f"cannot write {path}: a symbolic link, which would be replaced by a file (give the file it "
                f"points to: {os.path.realpath(path)})")
    if not stat.S_ISREG(mode):
        return f"cannot write {path}: not a regular file ({bounded.file_kind(mode)}), which would be replaced"
    return None


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


def _add_watch(sub: Subcommands, common: Parser) -> None:
    w = sub.add_parser("watch", parents=[common], help="show the status line, again whenever events change it")
    w.set_defaults(handler=_cmd_watch)
    w.add_argument("--interval", type=options.duration, default=1.0, help="at most one line per INTERVAL (default 1s)")


def _cmd_watch(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """The status line now, and again after events, at most once per --interval: no polling while idle."""
    with client.another() as feed:
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
    print(f"{time.strftime('%H:%M:%S')}  queued {s['queued']}  assigned {s.get('assigned', 0)}  "
          f"running {s['running']}  waiting {s['delayed'] + s['failed'] + s.get('deferred', 0)}  "
          f"done {s['done']}  dead {s['dead']}  workers {st['workers_live']}", flush=True)


COMMANDS: dict[str, Register] = {"events": _add_events, "metrics": _add_metrics, "watch": _add_watch}
