"""Loading the configuration: its TOML files (a main file plus drop-ins, read by configfiles.py) parsed and
validated into config.py's frozen dataclasses.

Every error names the file, the dotted key and the reason, and for TOML syntax
errors the line, so that `tqctl config check` reads like `nginx -t`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from . import configbroker, configcheck, control, cron
from .config import (
    CATCH_UP,
    DURABILITY_LEVELS,
    EXCHANGE_TYPES,
    INSTANCE_RE,
    JOB_EVENT_LEVELS,
    LOG_LEVELS,
    MAX_RETRIES,
    NAME_RE,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TASK_NAME_RE,
    AccessConfig,
    Binding,
    BrokerUrl,
    Config,
    ExchangeConfig,
    GatewayConfig,
    HostConfig,
    LogConfig,
    MqueueConfig,
    QueueConfig,
    ScheduleConfig,
    TaskConfig,
    WorkerConfig,
)
from .configfiles import ConfigError as ConfigError  # re-exported: what load raises
from .configfiles import read_files, unreadable_files
from .configreader import Reader as _Reader
from .configsecrets import readable_passwords

if TYPE_CHECKING:
    import logging


def load(path: str | None = None, default_required: bool = False) -> Config:
    """Read and validate the configuration; raise ConfigError naming file, key and reason. Without a file named
    (`path`, TQ_CONFIG), a missing default file means defaults unless `default_required`."""
    merged, origin, files = read_files(path, default_required)
    return _build(merged, origin, files)


def check(path: str | None = None) -> tuple[Config, list[ConfigError]]:
    """`tqctl config check`: load (ConfigError as load's; the default file is required), and the files that the
    configuration names for a daemon to read at its start which are missing or unreadable here."""
    merged, origin, files = read_files(path, default_required=True)
    cfg = _build(merged, origin, files)
    unreadable = unreadable_files(merged, origin, files)
    if os.geteuid() == 0:  # (root reads every file: would tq-gateway?)
        cfg, more = configcheck.gateway_files(cfg, origin, files, {str(e.key) for e in unreadable})
        unreadable += more
    return cfg, unreadable + configcheck.socket_path_taken(cfg, origin, files)


def reload(path: str | None, logger: logging.Logger) -> Config | None:
    """Load for SIGHUP: the new configuration, or None (logged) so the running one is kept."""
    try:
        return load(path)
    except ConfigError as e:
        logger.error("reload refused, keeping the running configuration: %s", e)
        return None


def keep_for_restart(running: Config, new: Config, keys: tuple[str, ...]) -> tuple[Config, list[str]]:
    """`new`, with the dotted `keys` (such as "mqueue.prefix") kept as `running` has them; and the keys of the
    files that differ (for a broker's url, the key changed: "amqp.password_file", not "amqp.url")."""
    pending = [key for key in keys if _value(running, key) != _value(new, key)]
    sections: dict[str, dict[str, Any]] = {}
    for key in pending:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = _value(running, key)
    kept = {section: replace(getattr(new, section), **values) for section, values in sections.items()}
    if "amqp.url" in pending and all(c.transport.url == c.amqp.url for c in (running, new)):
        pending = [key for key in pending if key != "transport.url"]  # ([transport] takes [amqp]'s: named once)
    return replace(new, **kept), [name for key in pending for name in _changed_keys(key, running, new)]


def _changed_keys(key: str, running: Config, new: Config) -> list[str]:
    """The keys an operator wrote that changed `key`: a BrokerUrl holds the table's url and its files."""
    old, now = _value(running, key), _value(new, key)
    if not (isinstance(old, BrokerUrl) and isinstance(now, BrokerUrl)):
        return [key]
    section = key.split(".")[0]
    files = [f"{section}.{name}" for name in configbroker.FILE_KEYS if getattr(old, name) != getattr(now, name)]
    rest = replace(old, **{name: getattr(now, name) for name in configbroker.FILE_KEYS})
    return ([key] if rest != now else []) + files


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _build(data: dict[str, Any], origin: dict[str, str], files: tuple[str, ...]) -> Config:
    root = _Reader(data, "", origin, files)
    root.check_keys({"host", "mqueue", "worker", "log", "tasks", "access", "queues", "exchanges", "schedules",
                     "gateway", "amqp", "transport"})
    host = _host(root.sub("host"))
    mq = _mqueue(root.sub("mqueue"))
    worker_r = root.sub("worker")
    worker = _worker(worker_r, WorkerConfig(), allow_instances=True)
    overrides = {}
    for key, value in worker_r.table.items():
        if isinstance(value, dict):
            if not INSTANCE_RE.fullmatch(key):
                raise worker_r.error(key, "instance names are letters, digits, _ and -")
            overrides[key] = _worker(worker_r.sub(key), worker, allow_instances=False)
    log = _log(root.sub("log"))
    tasks_r = root.sub("tasks")
    tasks = tuple(_task(tasks_r.sub(name), name) for name in tasks_r.table)
    access_r = root.sub("access")
    access_r.check_keys({"admins", "gateways"})
    access = AccessConfig(admins=access_r.principals("admins", AccessConfig.admins, groups_only=True) or (),
                          gateways=access_r.principals("gateways", AccessConfig.gateways, users_only=True) or ())
    queues_r = root.sub("queues")
    queues = {name: _queue(queues_r.sub(name), name) for name in queues_r.table}
    exchanges_r = root.sub("exchanges")
    exchanges = {name: _exchange(exchanges_r.sub(name), name) for name in exchanges_r.table}
    schedules_r = root.sub("schedules")
    schedules = {name: _schedule(schedules_r.sub(name), name) for name in schedules_r.table}
    amqp = configbroker.amqp(root.sub("amqp"))
    warnings = (configcheck.patterns_matching_nothing(tasks_r, tasks)
                + configcheck.unknown_principals(access_r, queues_r, queues)
                + configcheck.lease_within_broker_silence(root.sub("host"), root.sub("amqp"), host.lease, amqp)
                + readable_passwords([root.sub("amqp"), root.sub("transport")]))
    cfg = Config(files, host, mq, worker, overrides, log, tasks, access, queues, exchanges, schedules,
                 _gateway(root.sub("gateway")), amqp, configbroker.transport(root.sub("transport"), amqp),
                 tuple(str(w) for w in warnings))
    _check_routes(cfg, root)
    return cfg


def _check_routes(cfg: Config, root: _Reader) -> None:
    """Every task that tq-host submits by itself (a schedule's run, a follow-up) has a [tasks.*] table that
    matches it: else each run would be refused at submit, long after the configuration was called ok."""
    named = [(root.sub("schedules").sub(name), "task", s.task) for name, s in cfg.schedules.items()]
    for task in cfg.tasks:
        named += [(root.sub("tasks").sub(task.name), key, follow) for key, follow in
                  (("on_success", task.on_success), ("on_failure", task.on_failure)) if follow is not None]
    for reader, key, name in named:
        if cfg.task_for(name) is None:
            known = ", ".join(t.name for t in cfg.tasks) or "(none configured)"
            raise reader.error(key, f"no [tasks.*] table matches task {name!r}, so tq-host could not submit it; "
                                    f"known tasks: {known}")


def _schedule(r: _Reader, name: str) -> ScheduleConfig:
    r.check_keys({"cron", "every", "task", "args", "queue", "priority", "timezone", "catch_up", "overlap"})
    if not NAME_RE.fullmatch(name):
        raise r.error("", "schedule names are letters, digits, _ . - (at most 64)")
    if ("cron" in r.table) == ("every" in r.table):
        raise r.error("", "give one of cron (such as \"*/5 * * * *\" or \"@daily\") or every (such as \"30s\")")
    cron = _cron_checked(r, "cron")
    task: str = r.get("task", str, "")
    if not TASK_NAME_RE.fullmatch(task):
        raise r.error("task", f"expected a task name, got {task!r}")
    queue = r.get("queue", str, None)
    if queue is not None and not NAME_RE.fullmatch(queue):
        raise r.error("queue", "queue names are letters, digits, _ . - (at most 64)")
    timezone = _cron_checked(r, "timezone")
    return ScheduleConfig(
        name=name, task=task, cron=cron, every=r.duration("every", 0.0, minimum=1.0) if "every" in r.table else None,
        args=tuple(r.get("args", list, [])), queue=queue,
        priority=r.integer("priority", 0, PRIORITY_MIN, PRIORITY_MAX) if "priority" in r.table else None,
        timezone=timezone, catch_up=r.choice("catch_up", CATCH_UP, "last"), overlap=r.get("overlap", bool, False))


def _cron_checked(r: _Reader, key: str) -> str | None:
    """A schedule's cron expression or time zone, checked by cron.py (which imports croniter and zoneinfo when it
    checks one: only a configuration with schedules needs them)."""
    value: str | None = r.get(key, str, None)
    if value is not None:
        problem = cron.check_cron(value) if key == "cron" else cron.check_timezone(value)
        if problem:
            raise r.error(key, problem)
    return value


def _exchange(r: _Reader, name: str) -> ExchangeConfig:
    r.check_keys({"type", "bindings"})
    if not NAME_RE.fullmatch(name):
        raise r.error("", "exchange names are letters, digits, _ . - (at most 64)")
    kind = r.choice("type", EXCHANGE_TYPES, "fanout")
    raw = r.get("bindings", list, [])
    if not raw:
        raise r.error("bindings", 'expected at least one binding, such as [{ queue = "audit", key = "orders.*" }]')
    bindings = []
    for i, b in enumerate(raw):
        if not isinstance(b, dict) or not isinstance(b.get("queue"), str) or set(b) - {"queue", "key"}:
            raise r.error("bindings", f"binding {i + 1}: expected {{ queue = \"NAME\", key = \"KEY\" }}, got {b!r}")
        if not NAME_RE.fullmatch(b["queue"]):
            raise r.error("bindings", f"binding {i + 1}: invalid queue name {b['queue']!r}")
        key = b.get("key", "")
        if kind == "fanout" and key:
            raise r.error("bindings", f"binding {i + 1}: a fanout exchange sends to every queue; it takes no key")
        word = r"[A-Za-z0-9_*#:-]+" if kind == "topic" else r"[A-Za-z0-9_:-]+"
        words = rf"{word}(\.{word})*"
        if kind != "fanout" and not (isinstance(key, str) and re.fullmatch(words, key)):
            raise r.error("bindings", f"binding {i + 1}: a {kind} exchange needs a key of dot-separated words"
                                      f"{' (* and # match words)' if kind == 'topic' else ''}, got {key!r}")
        bindings.append(Binding(b["queue"], key))
    return ExchangeConfig(name, kind, tuple(bindings))


def _queue(r: _Reader, name: str) -> QueueConfig:
    r.check_keys({"submit", "concurrency", "rate"})
    if not NAME_RE.fullmatch(name):
        raise r.error("", "queue names are letters, digits, _ . - (at most 64)")
    concurrency = None if "concurrency" not in r.table else r.integer("concurrency", 1, 1, 10**6)
    return QueueConfig(name=name, submit=r.principals("submit", None), concurrency=concurrency,
                       rate=_rate(r, "rate"))


def _rate(r: _Reader, key: str) -> float | None:
    """`rate = "10/s"` (or per m, h, or a number: per second): jobs per second."""
    if key not in r.table:
        return None
    value = r.table[key]
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([smh])\s*", value) if isinstance(value, str) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif match:
        rate = float(match.group(1)) / {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    else:
        raise r.error(key, f'expected jobs per second, minute or hour, such as "10/s" or "100/m"; got {value!r}')
    if not 0 < rate <= 10**6:
        raise r.error(key, f"must be more than 0 and at most 1000000/s, got {value!r}")
    return rate


def _host(r: _Reader) -> HostConfig:
    r.check_keys({"state_dir", "socket", "durability", "lease", "forget_lost", "retain_age", "retain_count"})
    d = HostConfig()
    return HostConfig(
        state_dir=r.path("state_dir", d.state_dir),
        socket=r.path("socket", d.socket),
        durability=r.choice("durability", DURABILITY_LEVELS, d.durability),
        lease=r.duration("lease", d.lease, minimum=0.1),
        forget_lost=r.duration("forget_lost", d.forget_lost),
        retain_age=r.duration("retain_age", d.retain_age),
        retain_count=r.integer("retain_count", d.retain_count, 0, 10**12),
    )


def _gateway(r: _Reader) -> GatewayConfig:
    r.check_keys({f.name for f in fields(GatewayConfig)})
    d = GatewayConfig()
    listen: str = r.get("listen", str, d.listen)
    port = re.fullmatch(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):([0-9]{1,5})", listen)
    if port is None or int(port.group(1)) > 65535:
        raise r.error("listen", f"expected host:port (\"127.0.0.1:8790\", \"[::1]:8790\", \":8790\" for every "
                                f"address), got {listen!r}")
    cert, key = r.path("tls_cert", d.tls_cert, optional=True), r.path("tls_key", d.tls_key, optional=True)
    if bool(cert) != bool(key):
        raise r.error("tls_key" if cert else "tls_cert", "tls_cert and tls_key go together (both PEM files)")
    return GatewayConfig(
        listen=listen, metrics_public=r.get("metrics_public", bool, d.metrics_public), tls_cert=cert, tls_key=key,
        max_connections=r.integer("max_connections", d.max_connections, 1, 1_000_000),
        max_subscribers=r.integer("max_subscribers", d.max_subscribers, 0, 1_000_000),
        max_body=r.size("max_body") or d.max_body,
        max_wait=r.duration("max_wait", d.max_wait, minimum=1.0),  # (less: no remote wait could be asked)
        request_timeout=r.duration("request_timeout", d.request_timeout, minimum=0.1),
        host_connections=r.integer("host_connections", d.host_connections, 1, 100_000),
        events_per_second=r.integer("events_per_second", d.events_per_second, 1, 1_000),
    )


def _mqueue(r: _Reader) -> MqueueConfig:
    r.check_keys({"prefix", "max_message_size", "max_messages"})
    d = MqueueConfig()
    prefix: str = r.get("prefix", str, d.prefix)
    if not re.fullmatch(r"/[A-Za-z0-9_.-]{1,64}", prefix):
        raise r.error("prefix", f"must be a slash and up to 64 letters, digits, _ . - (got {prefix!r})")
    return MqueueConfig(
        prefix=prefix,
        max_message_size=r.integer("max_message_size", d.max_message_size, 512, control.MAX_MESSAGE_SIZE),
        max_messages=r.integer("max_messages", d.max_messages, 2, 65536),
    )


def _worker(r: _Reader, base: WorkerConfig, allow_instances: bool) -> WorkerConfig:
    keys = {"queues", "heartbeat", "prefetch", "stop_timeout"}
    if allow_instances:
        r = _Reader({k: v for k, v in r.table.items() if not isinstance(v, dict)}, r.dotted, r.origin, r.files)
    r.check_keys(keys)
    prefetch = r.integer("prefetch", base.prefetch, 1, 1024)  # the inbox is prefetch + 1 deep: checked at start
    return WorkerConfig(
        queues=r.names("queues", base.queues),
        heartbeat=r.duration("heartbeat", base.heartbeat, minimum=0.05),
        prefetch=prefetch,
        stop_timeout=r.duration("stop_timeout", base.stop_timeout),
    )


def _log(r: _Reader) -> LogConfig:
    r.check_keys({"level", "job_events", "job_events_per_second"})
    d = LogConfig()
    return LogConfig(
        level=r.choice("level", LOG_LEVELS, d.level),
        job_events=r.choice("job_events", JOB_EVENT_LEVELS, d.job_events),
        job_events_per_second=r.integer("job_events_per_second", d.job_events_per_second, 1, 10**9),
    )


def _task(r: _Reader, name: str) -> TaskConfig:
    r.check_keys({"handler", "command", "python", "queue", "timeout", "retries", "priority", "backoff",
                  "backoff_max", "kill_grace", "memory_max", "cpu_max", "open_files_max", "unique", "on_success",
                  "on_failure"})
    if not re.fullmatch(r"[A-Za-z0-9_*#:-]+(\.[A-Za-z0-9_*#:-]+)*", name):
        raise r.error("", "task names are dot-separated words of letters, digits, _ - : (or * and #)")
    given = [k for k in ("handler", "command", "python") if k in r.table]
    if len(given) > 1:
        raise r.error(given[1], f"give one of handler, command or python, not {' and '.join(given)}")
    d = TaskConfig(name)
    handler, command, python = "echo", (), ""
    if "handler" in r.table:
        handler = r.choice("handler", ("echo",), "echo")
    elif "command" in r.table:
        argv = r.get("command", list, [])
        if not argv or not all(isinstance(a, str) for a in argv):
            raise r.error("command", "expected a non-empty array of strings (argv)")
        handler, command = "command", tuple(argv)
    elif "python" in r.table:
        python = r.get("python", str, "")
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", python):
            raise r.error("python", f"expected \"module:function\", got {python!r}")
        handler = "python"
    queue: str = r.get("queue", str, d.queue)
    if not NAME_RE.fullmatch(queue):
        raise r.error("queue", "queue names are letters, digits, _ . - (at most 64)")
    backoff, backoff_max = r.duration("backoff", d.backoff), r.duration("backoff_max", d.backoff_max)
    if backoff > backoff_max:
        raise r.error("backoff" if "backoff" in r.table else "backoff_max",
                      f"backoff ({backoff:g}s, the first retry's wait) is more than backoff_max ({backoff_max:g}s, "
                      "the longest wait): every retry would wait backoff_max")
    return TaskConfig(
        name=name, handler=handler, command=command, python=python, queue=queue,
        timeout=r.duration("timeout", d.timeout, minimum=control.MIN_TIMEOUT),
        retries=r.integer("retries", d.retries, 0, MAX_RETRIES),
        priority=r.integer("priority", d.priority, PRIORITY_MIN, PRIORITY_MAX),
        backoff=backoff,
        backoff_max=backoff_max,
        kill_grace=r.duration("kill_grace", d.kill_grace),
        memory_max=r.size("memory_max"),
        cpu_max=None if "cpu_max" not in r.table else max(1, math.ceil(r.duration("cpu_max", 0.0, minimum=1.0))),
        open_files_max=None if "open_files_max" not in r.table else r.integer("open_files_max", 0, 3, 1 << 20),
        unique=r.get("unique", bool, d.unique),
        on_success=_follow_up(r, "on_success"),
        on_failure=_follow_up(r, "on_failure"),
    )


def _follow_up(r: _Reader, key: str) -> str | None:
    task: str | None = r.get(key, str, None)
    if task is not None and not TASK_NAME_RE.fullmatch(task):
        raise r.error(key, f"expected a task name, got {task!r}")
    return task
