"""What `tqctl config check` finds beyond what a load refuses: warnings of likely mistakes (a task pattern that
matches nothing, a user or group this system does not know, a lease too short for the broker's heartbeat), which
a load keeps in Config.warnings, and files a daemon would fail on at its start (a TLS file tq-gateway's user
cannot read, something other than a socket at host.socket), which only `check` looks at."""

from __future__ import annotations

import grp
import pwd
from dataclasses import replace

from .config import LINK_MARGIN, AmqpConfig, Config, QueueConfig, TaskConfig
from .configfiles import ConfigError
from .configreader import Reader
from .socketpath import socket_there


def gateway_files(cfg: Config, origin: dict[str, str], files: tuple[str, ...],
                   reported: set[str]) -> tuple[Config, list[ConfigError]]:
    """The gateway's TLS files that its service user cannot read (it would not start); a warning in the Config
    when that user does not exist here (it cannot be checked)."""
    from . import serviceuser

    named = [(f"gateway.{key}", getattr(cfg.gateway, key)) for key in serviceuser.GATEWAY_KEYS]
    named = [(key, path) for key, path in named if path and key not in reported]
    if not named:
        return cfg, []
    who = serviceuser.service_user(serviceuser.GATEWAY_USER, serviceuser.GATEWAY_GROUPS)
    if who is None:
        warning = (f"{', '.join(key for key, _ in named)}: there is no user {serviceuser.GATEWAY_USER} on this "
                   "machine (the one tq-gateway.service runs as), so whether it can read "
                   f"{', '.join(path for _, path in named)} is not checked")
        return replace(cfg, warnings=(*cfg.warnings, warning)), []
    problems = []
    for key, path in named:
        reason = serviceuser.why_unreadable(path, who)
        if reason:
            problems.append(ConfigError(origin.get(key) or origin.get("gateway") or files[0], key, reason))
    return cfg, problems


def socket_path_taken(cfg: Config, origin: dict[str, str], files: tuple[str, ...]) -> list[ConfigError]:
    """host.socket when something other than a socket is at its path: tq-host would refuse to start."""
    try:
        socket_there(cfg.host.socket)
    except ValueError as e:
        return [ConfigError(origin.get("host.socket") or origin.get("host") or files[0], "host.socket", str(e))]
    return []


def patterns_matching_nothing(tasks_r: Reader, tasks: tuple[TaskConfig, ...]) -> list[ConfigError]:
    """Task tables whose name holds * or # inside a word (`task-*`): a wildcard only as a whole word, and no task
    name holds either, so such a table matches no task (someone used to shell globs writes exactly this)."""
    return [tasks_r.sub(t.name).error("", f"{t.name!r} matches no task: * and # are wildcards only as a whole "
                                          f"dot-separated word (\"task.*\", not \"task-*\"), and no task name "
                                          "holds them")
            for t in tasks if any(("*" in w or "#" in w) and w not in ("*", "#") for w in t.name.split("."))]


def lease_within_broker_silence(host_r: Reader, amqp_r: Reader, lease: float, amqp: AmqpConfig) -> list[ConfigError]:
    """host.lease no longer than the broker's silence a healthy link may have (AmqpConfig.link_grace) while
    tq-host has remote workers (amqp.queues): until that much silence, tq-host cannot tell its own link dead
    unnoticed from a remote worker's silence, and counts it against the worker's lease (host/linkwatch.py); a
    lease that short may find a worker lost, and run its jobs again, while it is fine. Named by host.lease, or
    by amqp.heartbeat where the lease is the default."""
    limit = amqp.link_grace()
    if not amqp.queues or lease > limit:
        return []
    reader, key = (host_r, "lease") if "lease" in host_r.table else (amqp_r, "heartbeat")
    said = f"{lease:g}s" if key == "lease" else f"host.lease ({lease:g}s)"
    heartbeat = 2 * (lease - LINK_MARGIN)  # (amqp.heartbeat is at least 1 s)
    lower = f" or amqp.heartbeat below {heartbeat:g}s" if heartbeat > 1 else ""
    return [reader.error(key, f"{said} is no longer than amqp.heartbeat / 2 + {LINK_MARGIN:g} s ({limit:g}s), the "
                              "broker's silence tq-host waits for before it stops counting remote workers' silence "
                              "(its own link may be dead unnoticed): a remote worker may be presumed lost, and its "
                              f"jobs run again, while it is fine; set host.lease above {limit:g}s{lower}")]


def unknown_principals(access_r: Reader, queues_r: Reader, queues: dict[str, QueueConfig]) -> list[ConfigError]:
    """Users and groups named in `[access]` or a queue's `submit` that this system does not know: a typo locks
    people out, but a user or group made later counts at once, so these are warnings (names read from the files
    only: the defaults' users may not exist where tq is not installed)."""
    named = [(access_r, "admins", ("@" + g for g in access_r.table.get("admins", ()))),
             (access_r, "gateways", access_r.table.get("gateways", ()))]
    named += [(queues_r.sub(name), "submit", q.submit or ()) for name, q in queues.items()]
    problems = []
    for reader, key, principals in named:
        for principal in principals:
            group, name = principal.startswith("@"), principal.removeprefix("@")
            if not _exists(name, group):
                kind = "group" if group else "user"
                problems.append(reader.error(key, f"no {kind} {name!r} on this system (a typo? it stays in the "
                                                  f"rule: a {kind} made later counts)"))
    return problems


def _exists(name: str, group: bool) -> bool:
    try:
        (grp.getgrnam if group else pwd.getpwnam)(name)
    except KeyError:
        return False
    return True
