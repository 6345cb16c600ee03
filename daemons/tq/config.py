"""Configuration: the schema, frozen dataclasses with their defaults, limits and lookups.

configload.py reads the TOML files (a main file plus drop-ins) and validates
them into these; this module imports neither it nor cron.py, so that any
module may import the schema.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .configfiles import DEFAULT_SOCKET
from .configfiles import ConfigError as ConfigError  # re-exported: config.ConfigError is the daemons' error

DURABILITY_LEVELS = ("full", "normal")
JOB_EVENT_LEVELS = ("all", "failures", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # with fullmatch: `$` would take a final newline
INSTANCE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
LINK_MARGIN = 1.0  # seconds past the broker's heartbeat interval before its silence makes tq-host's link unknown
MAX_RETRIES = 1000
TASK_WORD_MAX, TASK_WORDS_MAX = 100, 16  # a task name: up to 16 dot-separated words of up to 100 characters
TASK_NAME_RE = re.compile(rf"[A-Za-z0-9_:-]{{1,{TASK_WORD_MAX}}}(\.[A-Za-z0-9_:-]{{1,{TASK_WORD_MAX}}})"
                          rf"{{0,{TASK_WORDS_MAX - 1}}}")


def task_name_problem(name: str) -> str | None:
    """What makes `name` no task name, None if it is one; one too long says how long, and the limit."""
    if TASK_NAME_RE.fullmatch(name):
        return None
    words = name.split(".")
    if len(words) > TASK_WORDS_MAX:
        return f"task name too long: {len(words)} dot-separated words, at most {TASK_WORDS_MAX}"
    longest = max(map(len, words))
    if longest > TASK_WORD_MAX:
        what = f"{longest} characters" if len(words) == 1 else f"a word of {longest} characters"
        return (f"task name too long: {what}, at most {TASK_WORD_MAX} (in each of its dot-separated "
                "words)")
    return f"invalid task name {name[:60]!r} (dot-separated words of letters, digits, _ - :)"


@dataclass(frozen=True)
class HostConfig:
    state_dir: str = "/var/lib/tq"
    socket: str = DEFAULT_SOCKET
    durability: str = "full"
    lease: float = 10.0
    forget_lost: float = 86400.0  # a lost worker is forgotten after this (0: kept until tqctl workers --forget)
    retain_age: float = 7 * 86400.0
    retain_count: int = 1_000_000


@dataclass(frozen=True)
class MqueueConfig:
    prefix: str = "/tq"
    max_message_size: int = 8192
    max_messages: int = 10


@dataclass(frozen=True)
class WorkerConfig:
    queues: tuple[str, ...] = ("default",)
    heartbeat: float = 1.0
    prefetch: int = 8
    stop_timeout: float = 20.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    job_events: str = "all"
    job_events_per_second: int = 200


@dataclass(frozen=True)
class AccessConfig:
    admins: tuple[str, ...] = ("tq-admin",)  # groups whose members may cancel and retry anyone's jobs
    gateways: tuple[str, ...] = ("tq-gateway",)  # users whose connections may act for a token's user (act_as)


@dataclass(frozen=True)
class GatewayConfig:
    """tq-gateway's (docs/gateway.md): where it listens, TLS, and the bounds that keep a flood from taking it down."""

    listen: str = "127.0.0.1:8790"  # host:port, [v6]:port; systemd's socket (LISTEN_FDS) takes precedence
    metrics_public: bool = False  # /metrics without a token
    tls_cert: str = ""  # PEM; with tls_key, HTTPS
    tls_key: str = ""
    max_connections: int = 1000  # HTTP connections at once; more are answered 503
    max_subscribers: int = 500  # SSE streams at once; more are answered 503
    max_body: int = 8 * 1024 * 1024  # bytes of a request body; more are answered 413
    max_wait: float = 300.0  # the longest ?wait= (or "timeout") a request may hold a connection
    request_timeout: float = 10.0  # a request's headers and body must arrive within this, or it is dropped
    host_connections: int = 100  # connections to tq-host kept for the tokens in use (one each, LRU)
    events_per_second: int = 100  # at most this many events a second from tq-host's stream, for every SSE follower


@dataclass(frozen=True)
class BrokerUrl:
    """An AMQP broker's address (`amqp://user@host:port/vhost`, or `amqps://` for TLS). The password comes from
    `password_file`, read when the daemon opens the transport, or from the URL; it is never shown: `masked()` is
    what logs, errors and `tqctl config check` print. With TLS the broker's certificate is checked against
    `ca_file` (else the system's authorities) and the URL's host; `cert_file` (and `key_file`, unless the key is in
    it) is this side's certificate, for a broker that asks for one."""

    user: str
    host: str
    port: int = 5672
    vhost: str = "/"
    password_file: str = ""
    password: str = field(default="", repr=False)  # only when the URL holds it
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def masked(self) -> str:
        secret = ":***" if self.password or self.password_file else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"amqp{'s' if self.tls else ''}://{quote(self.user, safe='')}{secret}@{host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.masked()


@dataclass(frozen=True)
class AmqpConfig:
    """tq-host's broker ([amqp]): the job queues whose jobs go to workers through it, and the connection's bounds."""

    url: BrokerUrl | None = None
    queues: tuple[str, ...] = ()
    heartbeat: float = 10.0  # AMQP heartbeat the client asks for (the broker may lower it)
    window: int = 1000  # publishes awaiting the broker's confirm at once, across the connection

    def link_grace(self) -> float:
        """Seconds of the broker's silence a healthy link of tq-host's may have: the broker's heartbeat interval
        (half the AMQP heartbeat) and a margin. Past it, the link is not known alive, and a remote worker's
        silence is not counted against its lease (host/linkwatch.py)."""
        return self.heartbeat / 2 + LINK_MARGIN


@dataclass(frozen=True)
class TransportConfig:
    """A worker's way to tq-host ([transport]): "posix" (this machine's mailboxes) or "amqp" (through a broker)."""

    kind: str = "posix"
    url: BrokerUrl | None = None  # [amqp] url when not given here
    machine: str = ""  # the machine's name in the worker's ("1@NAME"); "": its short host name


TRANSPORT_KINDS = ("posix", "amqp")


@dataclass(frozen=True)
class QueueConfig:
    name: str
    submit: tuple[str, ...] | None = None  # users and @groups who may submit to it (None: every member of tq)
    concurrency: int | None = None  # at most this many of its jobs run at once, across all workers
    rate: float | None = None  # at most this many of its jobs are dispatched per second (evenly spaced)


@dataclass(frozen=True)
class TaskConfig:
    name: str
    handler: str = "echo"  # "echo", "command" or "python"
    command: tuple[str, ...] = ()
    python: str = ""
    queue: str = "default"
    timeout: float = 30.0
    retries: int = 3
    priority: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    kill_grace: float = 5.0  # a stopped attempt (timeout, cancel) may clean up this long before SIGKILL
    memory_max: int | None = None  # bytes of address space (RLIMIT_AS) of a command job
    cpu_max: int | None = None  # seconds of CPU (RLIMIT_CPU) of a command job
    open_files_max: int | None = None  # descriptors (RLIMIT_NOFILE) of a command job
    unique: bool = False  # a submit while a job of this task with the same args is open returns that job
    on_success: str | None = None  # a task submitted when a job of this one is done (payload: id, state, result)
    on_failure: str | None = None  # ... when one is dead (out of attempts)

    def handler_spec(self) -> dict[str, Any]:
        """How a worker runs this task's jobs: what tq-host puts into each job at submit (handlers.start reads it).

        A job runs with what the host resolved when it accepted the job, whatever the worker's own config says.
        """
        spec: dict[str, Any] = {"handler": self.handler}
        if self.handler == "command":
            spec["command"] = list(self.command)
            limits = {"memory_max": self.memory_max, "cpu_max": self.cpu_max, "open_files_max": self.open_files_max}
            spec.update({k: v for k, v in limits.items() if v is not None})
        elif self.handler == "python":
            spec["python"] = self.python
        if self.kill_grace != TaskConfig.kill_grace:
            spec["kill_grace"] = self.kill_grace
        return spec


EXCHANGE_TYPES = ("fanout", "direct", "topic")
CATCH_UP = ("none", "last", "all")


@dataclass(frozen=True)
class ScheduleConfig:
    """A job submitted on a schedule: a cron expression in a time zone, or a fixed interval."""

    name: str
    task: str
    cron: str | None = None  # five fields, or @hourly, @daily ...
    every: float | None = None  # seconds
    args: tuple[Any, ...] = ()
    queue: str | None = None  # the task's by default
    priority: int | None = None
    timezone: str | None = None  # an IANA name; None: the machine's
    catch_up: str = "last"  # runs missed while tq-host was down: "none", "last" or "all"
    overlap: bool = False  # False: a run is skipped while the previous one is queued or running


@dataclass(frozen=True)
class Binding:
    queue: str
    key: str = ""  # direct: the routing key itself; topic: a pattern with * and #; fanout: none


@dataclass(frozen=True)
class ExchangeConfig:
    """One submit, one job per bound queue that the routing key matches (RabbitMQ's exchange types)."""

    name: str
    type: str = "fanout"
    bindings: tuple[Binding, ...] = ()

    def route(self, key: str) -> list[str]:
        """The queues a routing key goes to, each once, in the order of the bindings."""
        matched = [b.queue for b in self.bindings
                   if self.type == "fanout" or (self.type == "direct" and b.key == key)
                   or (self.type == "topic" and topic_matches(b.key, key))]
        return list(dict.fromkeys(matched))


@dataclass(frozen=True)
class Config:
    files: tuple[str, ...] = ()
    host: HostConfig = field(default_factory=HostConfig)
    mqueue: MqueueConfig = field(default_factory=MqueueConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    worker_overrides: dict[str, WorkerConfig] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    tasks: tuple[TaskConfig, ...] = ()
    access: AccessConfig = field(default_factory=AccessConfig)
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    exchanges: dict[str, ExchangeConfig] = field(default_factory=dict)
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    # `file: key: reason` of what loads but is likely a mistake (a task pattern that matches nothing, a user or
    # group that does not exist): `tqctl config check` prints them, tq-host logs them at its start and reload.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def worker_for(self, instance: str) -> WorkerConfig:
        """The worker settings of one instance: `[worker]` overridden by `[worker.N]`."""
        return self.worker_overrides.get(instance, self.worker)

    task_for: Callable[[str], TaskConfig | None] = field(init=False, compare=False, repr=False)
    """The task config for a task name: an exact name first, then the first pattern that matches (cached)."""

    def __post_init__(self) -> None:
        # Task names come from clients: the cache is bounded, and it goes with the configuration at reload.
        object.__setattr__(self, "task_for", functools.lru_cache(maxsize=10_000)(self._find_task))

    def _find_task(self, name: str) -> TaskConfig | None:
        for task in self.tasks:
            if task.name == name:
                return task
        for task in self.tasks:
            if ("*" in task.name or "#" in task.name) and topic_matches(task.name, name):
                return task
        return None

    @property
    def host_queue(self) -> str:
        return f"{self.mqueue.prefix}.host"

    def inbox(self, instance: str) -> str:
        return f"{self.mqueue.prefix}.w.{instance}"


def topic_matches(pattern: str, name: str) -> bool:
    """AMQP topic matching on dot-separated words: `*` is one word, `#` zero or more."""
    return _match(pattern.split("."), name.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
