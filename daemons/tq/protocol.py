"""The messages that cross the POSIX queues between tq-host and the workers.

Wire format: one version byte, one kind byte, then a compact JSON array of the
message's fields in declaration order (no field names: smaller, faster).
Decoding checks every field's type, so a malformed message is one
ProtocolError, never a crash further in.

Host -> worker inbox (`<prefix>.w.<instance>`): Jobs (a batch of Job), Sync, Cancel, Refused, NotSent.
Worker -> host queue (`<prefix>.host`): Hello, Heartbeat, Started, Results (a batch of Result), Release, Bye,
Synced.
Batches keep the syscalls and decodes per job down; each batch fits max_message_size.

Sync is the fence that makes redelivery exact: the host stops dispatching to a
worker, sends Sync at the lowest message priority, and the worker answers
Synced only after it has handled every message that was ahead of it. So when
Synced arrives, every job still assigned to that worker has been lost (its
result would have arrived first) and is requeued.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

VERSION = 2  # 2: a Job carries its queue and how to run it; a Result when the attempt started and its cost
SYNC_PRIORITY = 0
PRIORITY_OFFSET = 1001  # job priority -1000..1000 -> message priority 1..2001, above Sync
CANCEL_PRIORITY = 3000  # ahead of every job


M = TypeVar("M", bound="Message")


class ProtocolError(ValueError):
    """A message that is not a valid tq message."""


class TooLarge(ValueError):
    """A message larger than the queues' max_message_size."""


@dataclass(frozen=True)
class Message:
    KIND: ClassVar[bytes] = b"?"


@dataclass(frozen=True)
class Job(Message):
    KIND: ClassVar[bytes] = b"J"
    id: int
    attempt: int
    task: str
    args: list[Any]
    payload: Any
    timeout: float
    priority: int
    queue: str
    handler: dict[str, Any]  # how to run it, as tq-host resolved it at submit (config.TaskConfig.handler_spec)


@dataclass(frozen=True)
class Jobs(Message):
    """Several jobs for one worker in one message: each item is a Job's fields, in order."""

    KIND: ClassVar[bytes] = b"K"
    jobs: list[Any]


@dataclass(frozen=True)
class Sync(Message):
    KIND: ClassVar[bytes] = b"S"
    token: int


@dataclass(frozen=True)
class Cancel(Message):
    """Stop a job's attempt (`tqctl cancel` of a running job): the worker ends it and reports it failed."""

    KIND: ClassVar[bytes] = b"C"
    id: int
    attempt: int


@dataclass(frozen=True)
class Hello(Message):
    KIND: ClassVar[bytes] = b"H"
    instance: str
    pid: int
    queues: list[str]
    prefetch: int
    # The machine it runs on (machines.machine_id): a new pid from the same machine is a restart, from another
    # one a second worker under the name. Trailing, with a default: a hello of a worker from before decodes.
    machine: str = ""


@dataclass(frozen=True)
class Heartbeat(Message):
    KIND: ClassVar[bytes] = b"B"
    instance: str
    pid: int
    queues: list[str]
    prefetch: int
    running: int  # job id, 0 when idle
    # The worker's own figures (monitor.Sampler.sample): RSS, CPU, descriptors, uptime, jobs done and failed,
    # the running job. A trailing field with a default: a heartbeat of a worker from before it still decodes.
    monitor: dict[str, Any] = field(default_factory=dict)
    machine: str = ""  # as in Hello (after the monitor: a heartbeat of a worker from before still decodes)


@dataclass(frozen=True)
class Result(Message):
    KIND: ClassVar[bytes] = b"R"
    instance: str
    id: int
    attempt: int
    ok: bool
    output: str
    error: str
    duration: float
    started: float  # wall-clock time the handler started on the worker
    usage: dict[str, Any]  # what the attempt cost: see handlers.Execution.usage


@dataclass(frozen=True)
class Results(Message):
    """Several results from one worker in one message: each item is a Result's fields after `instance`."""

    KIND: ClassVar[bytes] = b"M"
    instance: str
    results: list[Any]


@dataclass(frozen=True)
class Started(Message):
    """A job's handler has run for a while (a job that ends sooner tells when it started in its Result)."""

    KIND: ClassVar[bytes] = b"G"
    instance: str
    id: int
    attempt: int
    started: float  # wall-clock time the handler started


@dataclass(frozen=True)
class Release(Message):
    """A job handed back unrun (or interrupted by a stop): requeue it without counting a failure."""

    KIND: ClassVar[bytes] = b"L"
    instance: str
    id: int
    attempt: int


@dataclass(frozen=True)
class Bye(Message):
    KIND: ClassVar[bytes] = b"Q"
    instance: str
    pid: int


@dataclass(frozen=True)
class Synced(Message):
    KIND: ClassVar[bytes] = b"Y"
    instance: str
    token: int
    machine: str = ""  # as in Hello: a fence answered by another machine's worker under the name is sent again


@dataclass(frozen=True)
class Refused(Message):
    """tq-host will not have this process under its name (another machine's worker holds it): it exits.

    Sent to the name's inbox, which both processes may read: the one it names by pid and machine acts on it, the
    other ignores it. A worker from before this message drops it as one it does not know.
    """

    KIND: ClassVar[bytes] = b"N"
    pid: int
    machine: str
    reason: str  # one line, for the worker's journal


@dataclass(frozen=True)
class NotSent(Message):
    """tq-host will send this worker no jobs of these queues, which its hello names (a remote worker's queue
    missing from tq-host's amqp.queues): one line for the worker's journal, on the machine where it runs.

    Addressed like Refused (pid and machine: the name's inbox may be shared). A worker from before this message
    drops it as one it does not know.
    """

    KIND: ClassVar[bytes] = b"U"
    pid: int
    machine: str
    queues: list[str]
    reason: str


# What travels on the queues. Job and Result are the items of the Jobs and Results batches, not messages.
KINDS: dict[bytes, type[Message]] = {cls.KIND: cls for cls in (Jobs, Sync, Cancel, Refused, NotSent, Hello, Heartbeat,
                                                                 Started, Results, Release, Bye, Synced)}
assert len(KINDS) == 12, "two messages share a KIND"
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "str": (str,), "float": (float, int), "bool": (bool,), "list[Any]": (list,),
    "list[str]": (list,), "Any": (object,), "dict[str, Any]": (dict,),
}


# Reused encoders: json.dumps with options builds a new JSONEncoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()
_ASCII = json.JSONEncoder(separators=(",", ":"))
_encode_str = json.encoder.encode_basestring_ascii  # what _ASCII writes for a str

_FIELDS: dict[type[Message], tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    cls: tuple((f.name, _TYPES[str(f.type)], str(f.type) == "list[str]") for f in fields(cls))
    for cls in (*KINDS.values(), Job, Result)
}
# How many leading fields a body must have: the trailing fields that have a default may be missing (a message
# from a daemon of the previous release of the same VERSION, from before they were added).
_REQUIRED: dict[type[Message], int] = {
    cls: sum(1 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING) for cls in _FIELDS
}


# The exact types (as json decodes them) that a well-formed body's fields may have, as one set of tuples per
# class: a body is checked with one tuple(map(type, body)) and one set lookup, in C. A list[str] field needs its
# items looked at, so those classes (Hello, Heartbeat: rare) are checked field by field (_checked) only; so is
# any body that misses the fast way, which then gets the exact error.
_JSON_TYPES = (dict, list, str, int, float, bool, type(None))
_SIGNATURES: dict[type[Message], frozenset[tuple[type, ...]]] = {
    cls: frozenset(itertools.product(*(_JSON_TYPES if object in kinds else kinds for _, kinds, _ in spec)))
    for cls, spec in _FIELDS.items() if not any(strings for _, _, strings in spec)
}


def encode(msg: Message, limit: int | None = None) -> bytes:
    """Bytes for the queue; raises TooLarge naming the limit when over it."""
    body = _COMPACT.encode(fields_of(msg)).encode()
    data = bytes([VERSION]) + msg.KIND + body
    if limit is not None and len(data) > limit:
        raise TooLarge(f"message is {len(data)} bytes; mqueue.max_message_size is {limit} bytes")
    return data


def decode(data: bytes) -> Message:
    """Parse and type-check a message; raise ProtocolError on anything malformed."""
    if len(data) < 3 or data[0] != VERSION:
        raise ProtocolError(f"not a tq v{VERSION} message ({len(data)} bytes, starts {data[:8]!r})")
    cls = KINDS.get(data[1:2])
    if cls is None:
        raise ProtocolError(f"unknown message kind {data[1:2]!r}")
    try:
        body = _DECODER.decode(data[2:].decode())  # (json.loads would first guess the encoding: it is UTF-8)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{cls.__name__}: body is not JSON: {e}") from None
    return _build(cls, body)


def _build(cls: type[M], body: Any) -> M:
    if type(body) is list and tuple(map(type, body)) in _SIGNATURES.get(cls, ()):
        return cls(*body)  # every field has a type it may have (booleans are not ints here: type() is exact)
    return _checked(cls, body)


def _checked(cls: type[M], body: Any) -> M:
    """_build field by field: the same verdict, and the exact error."""
    spec = _FIELDS[cls]
    if not isinstance(body, list) or len(body) != len(spec):
        least = _REQUIRED[cls]
        if not isinstance(body, list) or not least <= len(body) < len(spec):
            count = f"{len(spec)}" if least == len(spec) else f"{least} to {len(spec)}"
            raise ProtocolError(f"{cls.__name__}: body is not an array of {count} fields")
        spec = spec[:len(body)]  # the missing trailing fields take their defaults
    for value, (name, kinds, strings) in zip(body, spec, strict=True):
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds and object not in kinds):
            raise ProtocolError(f"{cls.__name__}: field {name!r} has the wrong type")
        if strings and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ProtocolError(f"{cls.__name__}: field {name!r} must be a list of strings")
    return cls(*body)


def fields_of(msg: Message) -> list[Any]:
    """A message's fields in order: an item of a Jobs or Results batch."""
    return [getattr(msg, name) for name, _, _ in _FIELDS[type(msg)]]


def pack_item(fields: list[Any]) -> bytes:
    """One item of a batch, encoded once (the host sizes batches by adding items up)."""
    return _COMPACT.encode(fields).encode()


def batch_size(items: list[bytes]) -> int:
    """The size of a Jobs message holding these items: version, kind, `[[`, items and commas, `]]`."""
    return 6 + sum(len(i) for i in items) + max(len(items) - 1, 0)


def jobs_message(items: list[bytes]) -> bytes:
    """A Jobs message from packed items: the same bytes as encode(Jobs([...]))."""
    return bytes([VERSION]) + Jobs.KIND + b"[[" + b",".join(items) + b"]]"


def unpack_jobs(batch: Jobs) -> list[Job]:
    """The jobs of a batch; raises ProtocolError if any item is malformed."""
    return [_build(Job, item) for item in batch.jobs]


def unpack_results(batch: Results) -> list[Result]:
    """The results of a batch; raises ProtocolError if any item is malformed."""
    if not all(isinstance(item, list) for item in batch.results):
        raise ProtocolError("Results: every item must be an array")
    return [_build(Result, [batch.instance, *item]) for item in batch.results]


def to_json(value: Any) -> str:
    """Compact ASCII JSON: the text the host keeps, stores and sends of a job's args and payload."""
    if type(value) is list and all(type(v) is str for v in value):  # args are mostly strings: skip the encoder
        return "[" + ",".join(map(_encode_str, value)) + "]"
    return _ASCII.encode(value)


def job_item(job_id: int, attempt: int, task: str, args_json: str, payload_json: str | None, timeout: float,
             priority: int, queue: str, handler_json: str) -> bytes:
    """One item of a Jobs batch, spliced from the JSON text the host keeps (no re-encoding of args).

    The task and queue names are quoted as they are: TASK_NAME_RE and NAME_RE admit nothing that JSON
    escapes. The timeout is finite (checked at submit), so repr() is its JSON.
    """
    return (f'[{job_id},{attempt},"{task}",{args_json},{payload_json or "null"},{timeout!r},{priority},"{queue}",'
            f'{handler_json}]').encode()


def job_size(task: str, queue: str, args_json: str, payload_json: str | None, handler_json: str) -> int:
    """An upper bound of the size of a Jobs message holding only this job (any id, attempt, timeout, priority)."""
    text_size = len(task) + len(queue) + len(args_json) + len(payload_json or "null") + len(handler_json) + 12
    return 2 + text_size + 80  # + version and kind bytes, and four numbers with their commas


def mq_priority(job_priority: int) -> int:
    """POSIX message priority for a job priority (higher is delivered first)."""
    return job_priority + PRIORITY_OFFSET

