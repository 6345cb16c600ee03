"""control's JSON: what tq-host takes from a request (no NaN, infinity or lone surrogate: JSON has none, and a
reply holding one would be no JSON) and what it writes."""

from __future__ import annotations

import json

import pytest

from tq import control
from tq.control import RequestError


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_decode_refuses_nan_and_the_infinities_naming_them(constant: str) -> None:
    with pytest.raises(RequestError) as e:
        control.decode(f'{{"op":"submit","jobs":[{{"task":"a","args":[{constant}]}}]}}'.encode())
    assert e.value.code == "bad_request" and f"{constant} is not a JSON number" in str(e.value)


def test_decode_refuses_a_lone_surrogate_and_takes_a_pair() -> None:
    with pytest.raises(RequestError) as e:
        control.decode(b'{"op":"submit","args":["\\ud800"]}')
    assert e.value.code == "bad_request" and str(e.value).startswith("text must be UTF-8")
    assert control.decode(b'{"op":"ping","x":"\\ud83d\\ude00"}')["x"] == "\U0001f600"


def test_what_tq_host_writes_has_no_nan_or_infinity() -> None:
    line = control.encode_out({"ok": True, "job": {"result": [float("nan"), float("inf"), 1.5]}})
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {"ok": True, "job": {"result": [None, None,
                                                                                                         1.5]}}
    with pytest.raises(UnicodeEncodeError):
        control.encode_out({"x": "\ud800"})


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.7976931348623159e308"])
def test_a_number_past_a_doubles_range_is_refused_as_infinity_is(number: str) -> None:
    with pytest.raises(control.Unfit, match="too large a number"):
        control.loads(f'{{"a": [{number}]}}')
    with pytest.raises(control.RequestError, match="too large a number"):
        control.decode(f'{{"op": "ping", "rid": 3, "a": {number}}}'.encode())
    assert control.rid_of(f'{{"op": "ping", "rid": 3, "a": {number}}}'.encode()) == 3
    assert control.loads('{"a": 1.7976931348623157e308}') == {"a": 1.7976931348623157e308}
