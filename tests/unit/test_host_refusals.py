"""tq-host's refusals of bad input, in-process (tests/parts.py): each is the error its code says (not_found,
bad_request), names what is wrong, and never becomes an internal error or a failed commit."""

from __future__ import annotations

import json
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parts import Parts, make_parts
from tq import config
from tq.host import access
from tq.host.server import Conn

BEYOND_64_BITS = 99999999999999999999999  # SQLite's integers are 64-bit: no job can have this id


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state")
    yield p
    p.close()


def ask(parts: Parts, op: str, **fields: Any) -> dict[str, Any]:
    """One request through the host's handler, then the step's commit (which must not fail): the reply."""
    a, b = socket.socketpair()
    try:
        parts.requests.handle(Conn(a, uid=0), json.dumps({"op": op, "rid": 1, **fields}).encode())
        parts.store.commit()
        (reply,) = [r for _c, r in parts.ledger.take()]
        return reply
    finally:
        a.close()
        b.close()


def refusal(reply: dict[str, Any]) -> tuple[str, str]:
    assert not reply["ok"], reply
    return reply["code"], reply["error"]


@pytest.mark.parametrize("op, fields", [
    ("get", {"id": BEYOND_64_BITS}),
    ("wait", {"id": BEYOND_64_BITS, "timeout": 0}),
    ("wait", {"ids": [BEYOND_64_BITS], "timeout": 0}),
    ("cancel", {"id": BEYOND_64_BITS}),
    ("retry", {"id": BEYOND_64_BITS}),
    ("submit", {"jobs": [{"task": "t", "after": BEYOND_64_BITS}]}),
    ("get", {"id": -1}),
])
def test_an_id_beyond_64_bits_is_no_job_not_an_internal_error(parts: Parts, op: str, fields: dict[str, Any]) -> None:
    code, error = refusal(ask(parts, op, **fields))
    assert code == "not_found" and error.startswith("no job "), error


@pytest.mark.parametrize("op", ["events", "subscribe"])
def test_an_event_filter_s_job_beyond_64_bits_is_refused_with_the_range(parts: Parts, op: str) -> None:
    code, error = refusal(ask(parts, op, job=BEYOND_64_BITS))
    assert code == "bad_request" and "9223372036854775807" in error, error


@pytest.mark.parametrize("option, value, words", [
    ("retries", -1, ["retries", "0 to 1000", "-1"]),
    ("retries", BEYOND_64_BITS, ["retries", "0 to 1000"]),
    ("timeout", 0, ["timeout", "at least 0.001"]),
    ("timeout", 1e-320, ["timeout", "at least 0.001"]),
    ("delay", -5, ["delay", "0 or more"]),
])
def test_an_option_out_of_range_is_refused_naming_it_and_its_rule(parts: Parts, option: str, value: int,
                                                                  words: list[str]) -> None:
    code, error = refusal(ask(parts, "submit", jobs=[{"task": "t", option: value}]))
    assert code == "bad_request" and all(w in error for w in words), error


@pytest.mark.parametrize("option, value", [("delay", 1e308), ("at", 1e300), ("at", 253402300800),
                                           ("delay", 253402300800)])
def test_a_run_time_past_the_year_9999_is_refused_with_the_bound(parts: Parts, option: str, value: float) -> None:
    code, error = refusal(ask(parts, "submit", jobs=[{"task": "t", option: value}]))
    assert code == "bad_request" and option in error and "253402300800" in error, error


@pytest.mark.parametrize("at", [-1, -2208988800, 0, 1e9])
def test_a_time_past_runs_at_once_before_the_epoch_too(parts: Parts, at: float) -> None:
    reply = ask(parts, "submit", jobs=[{"task": "t", "at": at}])
    assert reply["ok"], reply
    job = ask(parts, "get", id=reply["ids"][0])
    assert job["ok"] and job["job"]["state"] == "queued" and job["job"]["run_at"] is None, job


@pytest.mark.parametrize("op, fields", [
    ("submit", {"jobs": [{"task": "t", "at": 10**400}]}),
    ("submit", {"jobs": [{"task": "t", "delay": 10**400}]}),
    ("submit", {"jobs": [{"task": "t"}], "wait_for": 10**400}),
    ("wait", {"id": 1, "timeout": 10**400}),
    ("cancel", {"older_than": 10**400}),
])
def test_a_number_too_large_for_a_float_is_a_bad_request_naming_its_field(parts: Parts, op: str,
                                                                         fields: dict[str, Any]) -> None:
    code, error = refusal(ask(parts, op, **fields))
    name = next(k for k in ("at", "delay", "wait_for", "timeout", "older_than") if k in json.dumps(fields))
    assert code == "bad_request" and repr(name) in error, error


def test_a_task_name_too_long_is_refused_with_its_length_and_the_limit(parts: Parts) -> None:
    code, error = refusal(ask(parts, "submit", jobs=[{"task": "a" * 300}]))
    assert code == "bad_request" and "too long" in error and "300" in error and "100" in error, error
    code, error = refusal(ask(parts, "submit", jobs=[{"task": ".".join("w" * 17)}]))
    assert code == "bad_request" and "17 dot-separated words" in error and "16" in error, error
    code, error = refusal(ask(parts, "events", task="a" * 300))
    assert code == "bad_request" and "too long" in error, error


@pytest.mark.parametrize("fields", [{"task": "\udcff"}, {"queue": "\udcff"}, {"state": "nosuch"}])
def test_a_list_or_bulk_filter_that_no_job_can_match_is_a_bad_request(parts: Parts, fields: dict[str, Any]) -> None:
    for op in ("list", "cancel", "retry"):
        code, error = refusal(ask(parts, op, **fields))
        assert code == "bad_request" and next(iter(fields)) in error, (op, error)


def test_the_refusals_of_who_may_steer_or_change_name_everyone_who_may(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root, the daemons' own user (trusted: `runuser -u tq -- tqctl pause` works) and the admin groups; for a job,
    its submitter too."""
    monkeypatch.setattr(access.os, "geteuid", lambda: pwd.getpwnam("nobody").pw_uid)  # the daemons' user
    rules = access.Access(config.Config(access=config.AccessConfig(admins=("tq-admin", "ops"))))
    stranger = 4_000_000  # no such uid: in no group
    assert rules.may_steer(stranger, stranger, "pause a queue") == (
        "permission denied: only root, the daemons' user (nobody) and members of the admin groups (tq-admin, ops; "
        "[access] admins) may pause a queue")
    assert rules.may_change(stranger, stranger, 1000, "cancel", 7) == (
        "permission denied: only its submitter (uid 1000), root, the daemons' user (nobody) and members of the "
        "admin groups (tq-admin, ops; [access] admins) may cancel job 7")
    assert rules.may_steer(pwd.getpwnam("nobody").pw_uid, 0, "forget a worker") is None
