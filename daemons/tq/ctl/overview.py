"""tqctl's commands on the whole: status, workers, queues, schedules, pause and resume, and config check (which
reads the configuration, not the host)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from .. import configfiles, control
from ..client import Client
from . import render

if TYPE_CHECKING:
    from .options import Parser, Register, Subcommands


def _add_status(sub: Subcommands, common: Parser) -> None:
    sub.add_parser("status", parents=[common], help="host, job counts and workers").set_defaults(handler=_cmd_status)


def _cmd_status(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    st = client.status()
    if as_json:
        render.out(st)
        return 0
    states = st["states"]
    print(f"tq-host {st['version']} (pid {st['pid']}), up {render.age(time.time() - st['uptime'])}")
    print("jobs:    " + "  ".join(f"{k} {v}" for k, v in states.items()))
    syncing = f", {st['workers_syncing']} syncing" if st.get("workers_syncing") else ""  # (none from a tq-host before)
    print(f"workers: {st['workers_live']} live{syncing} of {st['workers_known']} known")
    if broker := st.get("broker"):  # (tq-host with [amqp]: its workers on other machines are reached through it)
        print("broker:  " + (f"connected to {broker['url']}" if broker.get("state") == "connected"
                             else str(broker.get("detail"))))
    if st.get("paused"):  # (none from a tq-host before)
        print(f"paused:  {', '.join(st['paused'])}")
    if st.get("reload_refused"):  # the running configuration is the one before
        print(f"reload refused: {st['reload_refused']} (the running configuration is the one loaded before)")
    print(f"malformed messages dropped: {st['malformed_messages']}")
    for note in st.get("mqueue", {}).get("limited", []):
        print(f"queue limits: {note}")
    return 0


def _add_workers(sub: Subcommands, common: Parser) -> None:
    w = sub.add_parser("workers", parents=[common], help="the workers the host knows")
    w.add_argument("--forget", metavar="NAME", help="drop worker NAME, lost or stopped, from the list and the "
                   "status counts (root and the admin groups; tq-host forgets a lost one after host.forget_lost)")
    w.set_defaults(handler=_cmd_workers)


def _cmd_workers(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.forget is not None:
        gone = client.forget_worker(args.forget)
        if as_json:
            render.out(gone)
        else:
            print(f"forgot worker {gone['instance']} ({gone['state']})")
        return 0
    workers = client.workers()
    if render.out_or_none(workers, as_json, "no workers have said hello"):
        return 0
    rows = [["WORKER", "MACHINE", "STATE", "PID", "QUEUES", "UP", "RSS", "CPU", "FDS", "DONE", "FAILED", "JOB", "SEEN"]]
    for w in workers:
        m = w.get("monitor") or {}  # none from a worker of the previous release: what the host itself knows
        job = m.get("job")
        if job:
            text = f"{job['id']} {job['task']}" + (f" (try {job['attempt']})" if job.get("attempt", 1) > 1 else "")
            text += f" {render.span(job.get('elapsed_seconds'))}"
            if m.get("stale"):  # not heard since: what tq-host last knew, not what runs now
                text += f" as of {render.span(m.get('sampled_ago'))} ago"
            tree = job.get("tree")
            if tree:
                text += (f", {tree['processes']} procs {render.byte_size(tree['rss_bytes'])} "
                         f"cpu {tree['cpu_seconds']:.1f}s")
        else:
            text = str(w["running"] or "-")
        cpu = "-" if m.get("cpu_seconds") is None else f"{m['cpu_seconds']:.1f}s"
        if m.get("cpu_percent") is not None:
            cpu += f" {m['cpu_percent']:.0f}%"
        queues = ",".join(w["queues"]) + (f" (not sent: {','.join(w['not_sent'])})" if w.get("not_sent") else "")
        rows.append([w["instance"], w.get("machine") or "-", w["state"], str(w["pid"]), queues,
                     render.span(m.get("uptime_seconds")), render.byte_size(m.get("rss_bytes")), cpu,
                     "-" if m.get("fds") is None else str(m["fds"]),
                     str(m.get("jobs_done", w["done"])), str(m.get("jobs_failed", "-")), text,
                     "-" if w["seen_ago"] is None else f"{w['seen_ago']:.1f}s ago"])
    render.table(rows)
    return 0


def _add_pause(sub: Subcommands, common: Parser) -> None:
    q = sub.add_parser("pause", parents=[common], help="dispatch nothing more from QUEUE (submits are taken; "
                       "running jobs finish)")
    q.add_argument("queue", metavar="QUEUE")
    q.set_defaults(handler=_cmd_pause)


def _add_resume(sub: Subcommands, common: Parser) -> None:
    q = sub.add_parser("resume", parents=[common], help="dispatch from a paused QUEUE again")
    q.add_argument("queue", metavar="QUEUE")
    q.set_defaults(handler=_cmd_pause)


def _cmd_pause(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    reply = client.pause(args.queue) if args.command == "pause" else client.resume(args.queue)
    if as_json:
        render.out(reply)
    else:
        state = "paused" if reply["paused"] else "resumed"
        print(f"queue {args.queue} {state}" + ("" if reply["changed"] else f" (it already was {state})"))
    return 0


def _add_queues(sub: Subcommands, common: Parser) -> None:
    sub.add_parser("queues", parents=[common], help="every queue: its jobs by state, oldest queued, paused, "
                   "which workers serve it").set_defaults(handler=_cmd_queues)


def _cmd_queues(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    queues = client.queues()
    if as_json:
        render.out(queues)
        return 0
    rows = [["QUEUE", "QUEUED", "ASSIGNED", "RUNNING", "WAITING", "OLDEST", "PAUSED", "LIMITS", "WORKERS"]]
    for q in queues:
        n = q["states"]
        oldest = "-" if q["oldest_queued_age"] is None else render.age(time.time() - q["oldest_queued_age"])
        workers = ",".join(q["workers"]) or "none: no live worker serves it"
        limits = ", ".join(([f"{q['concurrency']} at once"] if q["concurrency"] else [])
                           + ([configfiles.rate_text(q["rate"])] if q["rate"] else [])) or "-"
        rows.append([q["queue"], str(n.get("queued", 0)), str(n.get("assigned", 0)), str(n.get("running", 0)),
                     str(n.get("delayed", 0) + n.get("failed", 0)), oldest, "yes" if q["paused"] else "no",
                     limits, workers])
    render.table(rows)
    return 0


def _add_schedules(sub: Subcommands, common: Parser) -> None:
    sub.add_parser("schedules", parents=[common], help="every schedule: next run, last run and its job"
                   ).set_defaults(handler=_cmd_schedules)


def _cmd_schedules(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    schedules = client.schedules()
    if render.out_or_none(schedules, as_json, "no schedules ([schedules.NAME] in the configuration)"):
        return 0

    rows = [["SCHEDULE", "WHEN", "TASK", "NEXT RUN", "LAST RUN", "LAST JOB"]]
    for sc in schedules:
        when = sc["cron"] or f"every {sc['every']:g}s"
        if sc["timezone"]:
            when += f" ({sc['timezone']})"
        last = "-" if sc["last_job"] is None else f"{sc['last_job']} ({sc['last_state']})"
        if sc.get("last_error"):  # (none from a host of the previous release)
            last = f"failed, not submitted: {sc['last_error']}"
        elif sc.get("last_skipped"):  # (the same)
            last = f"skipped: {sc['last_skipped']}"
        next_run, last_run = render.local_time(sc["next_run"]), render.local_time(sc["last_run"])
        if sc.get("disabled"):  # its next run could not be computed (the journal said so)
            next_run = f"disabled: {sc['disabled']}"
        rows.append([sc["name"], when, sc["task"], next_run, last_run, last])
    render.table(rows)
    return 0


def _add_config(sub: Subcommands, common: Parser) -> None:
    cfg = sub.add_parser("config", parents=[common], help="configuration")
    cfg.add_argument("action", choices=("check",), help="check: validate the configuration (exit 0 or 2)")
    cfg.set_defaults(handler=None)  # it reads the configuration, not the host


def config_check(args: argparse.Namespace, as_json: bool) -> int:
    from .. import configload  # the whole validation: only this command needs it

    try:
        cfg, unreadable = configload.check(args.config)  # no file is not an ok file
    except configload.ConfigError as e:
        render.error(str(e), as_json, control.EXIT_USAGE)
        return control.EXIT_USAGE
    if unreadable:  # each one: the daemon that reads it would not start
        if as_json:
            render.out({"ok": False, "error": str(unreadable[0]), "errors": [str(p) for p in unreadable],
                        "exit_code": control.EXIT_USAGE})
        for problem in unreadable:
            render.error(str(problem), False, control.EXIT_USAGE)
        return control.EXIT_USAGE
    for warning in cfg.warnings:  # it loads, but likely not as meant: exit 0 all the same
        render.warning(warning)
    broker = cfg.transport.url or cfg.amqp.url  # shown masked: the password never leaves the file
    if as_json:
        render.out({"ok": True, "files": list(cfg.files), "tasks": [t.name for t in cfg.tasks],
                    "gateways": list(cfg.access.gateways), "transport": cfg.transport.kind,
                    "broker": broker.masked() if broker else None, "warnings": list(cfg.warnings)})
    else:
        print(f"configuration ok: {', '.join(cfg.files)} ({len(cfg.tasks)} task(s))"
              + (f"; broker {broker.masked()}" if broker else ""))
    return 0


COMMANDS: dict[str, Register] = {"status": _add_status, "workers": _add_workers, "pause": _add_pause,
                                 "resume": _add_resume, "queues": _add_queues, "schedules": _add_schedules,
                                 "config": _add_config}
