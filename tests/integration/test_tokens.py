"""Tokens and pages through the real daemons and tqctl: a read-only token reads and changes nothing; `tqctl list
--after` pages down the ids. (Who may act with a token, and revocation: tests/reliability/test_access.py.)"""

from __future__ import annotations

import json
import pwd

import pytest

from conftest import MEMBER
from harness import Suite
from tq.client import PermissionDenied


def test_a_read_only_token_lists_and_is_refused_a_submit(suite: Suite, member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    made = suite.tqctl("--json", "token", "create", "viewer", "--user", MEMBER, "--read-only")
    assert made.returncode == 0, made.stderr
    reply = json.loads(made.stdout)
    assert (reply["name"], reply["user"], reply["read_only"]) == ("viewer", MEMBER, True)
    job_id = suite.client().submit("task-1")
    viewer = suite.client()
    assert viewer.act_as(reply["token"])["read_only"] is True
    assert [j["id"] for j in viewer.list_jobs()] == [job_id]
    with pytest.raises(PermissionDenied, match="token viewer is read-only") as refused:
        viewer.submit("task-1")
    assert refused.value.exit_code == 4
    assert [j["id"] for j in suite.client().list_jobs()] == [job_id]  # nothing was submitted
    table = suite.tqctl("token", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "USER", "ACCESS", "CREATED", "STATE"] and table[1].split()[:3] == [
        "viewer", MEMBER, "read-only"] and table[1].split()[-1] == "usable"
    assert suite.tqctl("token", "create", "viewer", "--user", MEMBER).returncode == 2  # taken


def test_tqctl_list_after_pages_down_the_ids(suite: Suite) -> None:
    suite.start(workers=1)
    ids = suite.client().submit_many([("task-1", [])] * 5)

    def page(*args: str) -> list[int]:
        r = suite.tqctl("--json", "list", "--limit", "2", *args)
        assert r.returncode == 0, r.stderr
        return [j["id"] for j in json.loads(r.stdout)]

    assert page() == ids[:2:-1]
    assert page("--after", str(ids[3])) == ids[2:0:-1]
    assert page("--after", str(ids[1])) == ids[:1]
    assert page("--after", str(ids[0])) == []
    r = suite.tqctl("list", "--after", "0")
    assert r.returncode == 2 and "after must be a job id" in r.stderr
