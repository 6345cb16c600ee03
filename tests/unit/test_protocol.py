from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tq import protocol


def test_every_message_kind_round_trips() -> None:
    msgs: list[protocol.Message] = [
        protocol.Sync(7), protocol.Hello("1", 42, ["default"], 2), protocol.Heartbeat("1", 42, ["q"], 2, 0),
        protocol.Release("1", 1, 1), protocol.Started("1", 1, 1, 1.7e9),
        protocol.Bye("1", 42), protocol.Synced("1", 7),
        protocol.Jobs([[1, 1, "t", [], None, 1.0, 0, "q", {"handler": "echo"}]]),
        protocol.Results("1", [[1, 1, True, "out", "", 0.5, 1.7e9, {"user": 0.1}]]),
    ]
    for msg in msgs:
        assert protocol.decode(protocol.encode(msg)) == msg


def test_a_heartbeat_carries_the_monitor_and_one_without_it_still_decodes() -> None:
    """A worker of the previous release (same VERSION) sends five fields: the host keeps its lease."""
    figures = {"rss_bytes": 1 << 24, "cpu_seconds": 1.5, "fds": 9, "job": {"id": 4, "tree": {"processes": 3}}}
    new = protocol.Heartbeat("1", 42, ["q"], 2, 4, figures)
    data = protocol.encode(new)
    assert data.startswith(b'\x02B["1",42,["q"],2,4,{"rss_bytes"')
    assert protocol.decode(data) == new
    old = protocol.decode(b'\x02B["1",42,["q"],2,0]')
    assert old == protocol.Heartbeat("1", 42, ["q"], 2, 0) and old.monitor == {}


@pytest.mark.parametrize("body", [b'["1",42,["q"],2]', b'["1",42,["q"],2,0,{},1]', b'["1",42,["q"],2,0,[]]',
                                  b'["1",42,["q"],2,0,null]'])
def test_a_heartbeat_with_fields_missing_extra_or_a_monitor_not_an_object_is_malformed(body: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="Heartbeat"):
        protocol.decode(b"\x02B" + body)


def test_only_trailing_fields_with_a_default_may_be_missing() -> None:
    with pytest.raises(protocol.ProtocolError, match="array of 2 fields"):
        protocol.decode(b'\x02Q["1"]')
    with pytest.raises(protocol.ProtocolError, match="array of 4 to 5 fields"):
        protocol.decode(b'\x02H["1",42,["q"]]')
    with pytest.raises(protocol.ProtocolError, match="array of 5 to 7 fields"):
        protocol.decode(b'\x02B["1",42,["q"],2]')


def test_a_hello_heartbeat_and_synced_carry_the_machine_and_ones_without_it_still_decode() -> None:
    """A worker of the previous release (same VERSION) says no machine: tq-host takes it as today."""
    assert protocol.decode(b'\x02H["1@m",42,["q"],2]') == protocol.Hello("1@m", 42, ["q"], 2, "")
    assert protocol.decode(b'\x02B["1@m",42,["q"],2,0,{}]').machine == ""
    assert protocol.decode(b'\x02Y["1@m",7]') == protocol.Synced("1@m", 7, "")
    for msg in (protocol.Hello("1@m", 42, ["q"], 2, "ab12"), protocol.Heartbeat("1@m", 42, ["q"], 2, 0, {}, "ab12"),
                protocol.Synced("1@m", 7, "ab12"), protocol.Refused(42, "ab12", "another worker is named 1@m")):
        assert protocol.decode(protocol.encode(msg)) == msg
    with pytest.raises(protocol.ProtocolError, match="Hello: field 'machine'"):
        protocol.decode(b'\x02H["1@m",42,["q"],2,7]')
    with pytest.raises(protocol.ProtocolError, match="Refused"):
        protocol.decode(b'\x02N[42,"ab12"]')


def test_too_large_names_the_limit() -> None:
    msg = protocol.Jobs([[1, 1, "t", ["x" * 10000], None, 1.0, 0, "q", {}]])
    with pytest.raises(protocol.TooLarge, match="max_message_size is 8192 bytes"):
        protocol.encode(msg, 8192)


@pytest.mark.parametrize("data", [b"", b"\x02", b"\x01K[[]]", b"\x02Z{}", b"\x02J[1]", b"\x02K[1]", b"\x02Knot json",
                                  b'\x02S{"token":"7"}', b'\x02S{"token":true}', b'\x02H{"instance":"1"}',
                                  b'\x02H{"instance":"1","pid":1,"queues":[1],"prefetch":1}', b"\x01S[7]"])
def test_malformed_messages_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        protocol.decode(data)
    except protocol.ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(protocol.KINDS)), st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=10)))
def test_decode_of_wrong_json_bodies_is_a_protocol_error(kind: bytes, body: dict[str, object]) -> None:
    import json
    try:
        protocol.decode(bytes([protocol.VERSION]) + kind + json.dumps(body).encode())
    except protocol.ProtocolError:
        pass


def test_batches_unpack_to_their_items_and_reject_malformed_ones() -> None:
    jobs = protocol.Jobs([[1, 1, "t", ["a"], None, 30.0, 0, "q", {}], [2, 3, "u", [], {"p": 1}, 5.0, 9, "q", {}]])
    assert [j.id for j in protocol.unpack_jobs(jobs)] == [1, 2]
    results = protocol.Results("4", [[1, 1, True, "ok", "", 0.1, 5.0, {}]])
    assert protocol.unpack_results(results) == [protocol.Result("4", 1, 1, True, "ok", "", 0.1, 5.0, {})]
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack_jobs(protocol.Jobs([[1, "one", "t", [], None, 30.0, 0, "q", {}]]))
    with pytest.raises(protocol.ProtocolError):  # a handler that is not an object
        protocol.unpack_jobs(protocol.Jobs([[1, 1, "t", [], None, 30.0, 0, "q", ["echo"]]]))
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack_results(protocol.Results("4", ["not an array"]))


def test_a_packed_jobs_message_is_what_encode_makes() -> None:
    items = [[1, 1, "t", ["a"], None, 30.0, 0, "q", {}], [2, 1, "t", [], {"x": 1}, 30.0, 5, "q", {"handler": "echo"}]]
    packed = [protocol.pack_item(i) for i in items]
    data = protocol.jobs_message(packed)
    assert data == protocol.encode(protocol.Jobs(items))
    assert len(data) == protocol.batch_size(packed)


@pytest.mark.parametrize(("args", "payload"), [(["a", 1, None], None), ([], {"x": [1.5, "é\n"]}), (["\u2603"], "p")])
def test_a_spliced_job_item_decodes_to_the_job_and_fits_its_size_bound(args: list[Any], payload: Any) -> None:
    args_json = protocol.to_json(args)
    payload_json = None if payload is None else protocol.to_json(payload)
    handler = {"handler": "command", "command": ["/bin/echo", "\u00e9"], "memory_max": 1 << 30}
    handler_json = protocol.to_json(handler)
    item = protocol.job_item(2**62, 7, "a.b-c:d_e", args_json, payload_json, 1e-7, -1000, "q.1-x_y", handler_json)
    data = protocol.jobs_message([item])
    (job,) = protocol.unpack_jobs(protocol.decode(data))  # type: ignore[arg-type]
    assert job == protocol.Job(2**62, 7, "a.b-c:d_e", args, payload, 1e-7, -1000, "q.1-x_y", handler)
    assert len(data) <= protocol.job_size("a.b-c:d_e", "q.1-x_y", args_json, payload_json, handler_json)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=8)) | st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                                     lambda inner: st.lists(inner, max_size=3), max_leaves=6))
def test_to_json_writes_what_json_dumps_writes(value: Any) -> None:
    assert protocol.to_json(value) == json.dumps(value, separators=(",", ":"))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=3), c, max_size=2),
                     max_leaves=4)
_OF_KIND: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(), str: st.text(max_size=5), float: st.floats(allow_nan=False), bool: st.booleans(),
    list: st.lists(_JSON, max_size=2) | st.lists(st.text(max_size=3), max_size=2),
    dict: st.dictionaries(st.text(max_size=3), _JSON, max_size=2), object: _JSON,
}


@st.composite
def _class_and_body(draw: st.DrawFn) -> tuple[type[protocol.Message], list[Any]]:
    """A message class (or Job, Result) and a body that is mostly, or wholly, of the right types."""
    cls = draw(st.sampled_from(sorted(protocol._FIELDS, key=lambda c: c.__name__)))
    spec = protocol._FIELDS[cls]
    body = [draw(st.one_of(*(_OF_KIND[k] for k in kinds)) | _JSON if draw(st.integers(0, 9)) == 0
                 else st.one_of(*(_OF_KIND[k] for k in kinds))) for _, kinds, _ in spec]
    cut = draw(st.integers(-1, 1))  # a field missing, or one too many
    return cls, body[:cut] if cut < 0 else body + [0] * cut


@settings(max_examples=3000, deadline=None)
@given(_class_and_body())
def test_the_fast_type_check_gives_the_field_by_field_verdict(case: tuple[type[protocol.Message], list[Any]]) -> None:
    """_build's one-lookup check (tuple of the fields' types in a set) accepts exactly what _checked accepts."""
    cls, body = case
    body = json.loads(json.dumps(body))  # the types as they come off the wire
    try:
        expected: protocol.Message | None = protocol._checked(cls, body)
    except protocol.ProtocolError:
        expected = None
    if expected is None:
        with pytest.raises(protocol.ProtocolError):
            protocol._build(cls, body)
    else:
        assert protocol._build(cls, body) == expected


def test_a_well_typed_result_and_job_take_the_fast_way_and_a_bool_for_an_int_does_not() -> None:
    result = ["w1", 7, 1, True, "", "", 0, 1.5, {}]  # an int where a float may be: a float field takes both
    job = [7, 1, "task-1", ["a"], {"any": [1]}, 300, 0, "default", {"kind": "echo"}]
    assert tuple(map(type, result)) in protocol._SIGNATURES[protocol.Result]
    assert tuple(map(type, job)) in protocol._SIGNATURES[protocol.Job]
    assert protocol._build(protocol.Result, result).duration == 0
    bad = [*result[:1], True, *result[2:]]  # a boolean as the job id
    assert tuple(map(type, bad)) not in protocol._SIGNATURES[protocol.Result]
    with pytest.raises(protocol.ProtocolError, match="field 'id' has the wrong type"):
        protocol._build(protocol.Result, bad)
    assert protocol.Heartbeat not in protocol._SIGNATURES  # a list[str] field: checked item by item
