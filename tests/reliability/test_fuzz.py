"""Property-based fuzzing of everything that reads outside input: queue messages, control requests, config.

100,000 cases in all by default; TQ_FUZZ_SCALE=10 runs ten times as many. The properties: decoding
raises only its own error type, the host answers every request with a well-formed reply and never
raises, the config loader raises only ConfigError (naming a file) or returns a valid Config.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parts import Parts, make_parts
from tq import configload, control, protocol
from tq.host.server import Conn

SCALE = int(os.environ.get("TQ_FUZZ_SCALE", "1"))
def fuzz(cases: int) -> settings:
    return settings(max_examples=cases * SCALE, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)


# ---- queue messages: 40,000 cases ---------------------------------------------------------------

def _message_bytes() -> st.SearchStrategy[bytes]:
    field_names = sorted({f for cls in protocol.KINDS.values() for f in cls.__dataclass_fields__})
    bodies = st.dictionaries(st.sampled_from(field_names) | st.text(max_size=6), json_values, max_size=9)
    framed = st.builds(lambda v, k, b: bytes([v]) + k + json.dumps(b).encode(),
                       st.sampled_from([protocol.VERSION, 0, 1, 255]), st.sampled_from(sorted(protocol.KINDS)),
                       bodies)
    return framed | st.binary(max_size=200)


@fuzz(40_000)
@given(_message_bytes())
def test_fuzz_message_decoding_raises_only_protocol_error(data: bytes) -> None:
    try:
        msg = protocol.decode(data)
    except protocol.ProtocolError:
        return
    assert protocol.decode(protocol.encode(msg)) == msg


# ---- control requests: 30,000 cases --------------------------------------------------------------

@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Parts, Conn]]:
    """tq-host's parts with a real store, fed requests directly (no socket, no POSIX queues needed)."""
    parts = make_parts(tmp_path_factory.mktemp("fuzz-host"), '[tasks."#"]\nhandler = "echo"\n'
                                                              '[tasks."mail.*"]\nqueue = "mail"\n')
    a, b = socket.socketpair()
    yield parts, Conn(a, uid=1000)
    a.close()
    b.close()
    parts.close()


ops = st.sampled_from(["submit", "get", "wait", "list", "status", "workers", "cancel", "retry", "ping", "nope"])
job_specs = st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["task-1", "mail.send", "a.b.c", "", "bad name", "x" * 300]) | json_values,
    "args": st.lists(json_values, max_size=3) | json_values,
    "payload": json_values, "queue": st.sampled_from(["default", "mail", "../etc"]) | json_values,
    "priority": st.integers(-2000, 2000) | json_values, "delay": st.floats() | json_values,
    "timeout": st.floats() | json_values, "retries": st.integers(-5, 5) | json_values})
requests = st.fixed_dictionaries({"op": ops | json_values}, optional={
    "rid": json_values, "id": st.integers(-5, 50) | json_values, "jobs": st.lists(job_specs, max_size=3) | json_values,
    "timeout": st.floats(-1, 0) | json_values, "wait_for": st.floats(-1, 0.01) | json_values,
    "limit": st.integers(-5, 5) | json_values,
    "state": st.sampled_from(["done", "queued"]) | json_values, "queue": json_values, "task": json_values})


def _line(req: Any, raw: bytes) -> bytes:
    return raw if raw else json.dumps(req).encode()


@fuzz(30_000)
@given(requests, st.one_of(st.just(b""), st.binary(max_size=80)))
def test_fuzz_control_requests_always_get_a_well_formed_answer(host: tuple[Parts, Conn], req: dict[str, Any],
                                                               raw: bytes) -> None:
    parts, conn = host
    parts.requests.handle(conn, _line(req, raw))
    replies = parts.ledger.take()
    parts.waiters.expire(float("inf"))  # every wait ends: nothing carries over to the next case
    replies += parts.ledger.take()
    parts.store.rollback()  # keep the store small: nothing here is meant to last
    parts.jobs.load()
    for _conn, reply in replies:
        assert isinstance(reply["ok"], bool)
        assert reply["ok"] or reply["code"] in control.ERRORS
        if not reply["ok"]:
            assert reply["error"] and "\n" not in reply["error"]
        json.dumps(reply)  # it can be sent


# ---- configuration: 30,000 cases -----------------------------------------------------------------

KEYS = {"host": ["state_dir", "socket", "durability", "lease", "retain_age", "retain_count"],
        "mqueue": ["prefix", "max_message_size", "max_messages"],
        "worker": ["queues", "heartbeat", "prefetch", "stop_timeout", "2"],
        "log": ["level", "job_events", "job_events_per_second"],
        "tasks": ["echo", "a.*", "#", "bad name"], "access": ["admins", "nope"], "queues": ["mail", "bad name"],
        "bogus": ["x"]}
TASK_KEYS = ["handler", "command", "python", "queue", "timeout", "retries", "priority", "backoff", "backoff_max",
             "kill_grace", "memory_max", "cpu_max", "open_files_max", "oops"]
scalars = (st.none() | st.booleans() | st.integers(-10, 100_000) | st.floats(allow_nan=False)
           | st.sampled_from(["30s", "1h", "soon", "echo", "full", "all", "/tq", "m:f", "", "default", "64M", "2x"]))
values = scalars | st.lists(scalars | st.text(max_size=5), max_size=3)


# The strategies are made once: one made anew at each draw computes its label again, which made each case of
# this test 7-50 ms (hypothesis 6.170) instead of about 4.
_SECTIONS = st.lists(st.sampled_from(sorted(KEYS)), max_size=5, unique=True)
_KEYS_OF = {section: st.lists(st.sampled_from(keys), max_size=4, unique=True) for section, keys in KEYS.items()}
_NAMES_OF = {section: st.lists(st.sampled_from(names), max_size=4, unique=True) for section, names in
             {"tasks": TASK_KEYS, "queues": ["submit", "nope"], "worker": ["queues", "prefetch", "nope"]}.items()}
_AS = st.sampled_from(["table", "table", 7, "text"])  # what a section is: mostly a table, else a wrong type


@st.composite
def config_data(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for section in draw(_SECTIONS):
        table: dict[str, Any] = {}
        for key in draw(_KEYS_OF[section]):
            if section in ("tasks", "queues") or key == "2":
                table[key] = {k: draw(values) for k in draw(_NAMES_OF[section])}
            else:
                table[key] = draw(values)
        kind = draw(_AS)
        data[section] = table if kind == "table" else kind
    return data


@fuzz(25_000)
@given(config_data())
def test_fuzz_config_tables_load_or_raise_config_error(data: dict[str, Any]) -> None:
    data = {k: v for k, v in data.items() if v is not None}
    clean = json.loads(json.dumps(data, default=str).replace("NaN", "0"))
    try:
        cfg = configload._build(clean, {}, ("fuzz.toml",))
    except configload.ConfigError as e:
        assert str(e).startswith("fuzz.toml: ") and "\n" not in str(e)
        return
    assert cfg.mqueue.max_messages >= 2 and 1 <= cfg.worker.prefetch <= 1024


@fuzz(5_000)
@given(st.text(alphabet=st.sampled_from(list('[]="\'.#*:, \n\tabcdhostworkerqueues0123456789-_{}')), max_size=120))
def test_fuzz_config_text_loads_or_raises_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text)
    try:
        configload.load(str(path))
    except configload.ConfigError as e:
        assert str(e).startswith(f"{path}: ")
