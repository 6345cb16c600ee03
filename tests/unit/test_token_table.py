"""API tokens and act_as in tq-host, in-process (tests/parts.py): made, listed and revoked by root and admins, kept
as their SHA-256 only; a connection that acts with one is its user's (uid, access rules), read-only where the
token is, and refused from the token's revocation on. A token acts only for a member of the socket's group (here a
stand-in group tq holding nobody and www-data; with real users and groups: tests/reliability/test_access.py). Also
list's pages (`after`) and events since a time."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parts import Parts, make_parts
from tq.host import reach
from tq.host.records import SCHEMA_VERSION
from tq.host.server import Conn
from tq.host.store import Store

NOBODY = pwd.getpwnam("nobody")
WWW = pwd.getpwnam("www-data")


@pytest.fixture(autouse=True)
def group_tq(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The socket's group as tq-host sees it: a group tq of nobody and www-data (its members: change at will)."""
    members = ["nobody", "www-data"]
    monkeypatch.setattr(reach, "socket_group", lambda: grp.struct_group(("tq", "x", 4242, members)))
    return members


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[access]\ngateways = ["backup"]\n')
    yield p
    p.close()


@pytest.fixture
def conns() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def conn(conns: list[socket.socket], uid: int = 0, gid: int = 0) -> Conn:
    a, b = socket.socketpair()
    conns += [a, b]
    return Conn(a, uid=uid, gid=gid)


def ask(parts: Parts, c: Conn, op: str, **fields: Any) -> dict[str, Any]:
    """One request on connection `c` through the host's handler, then the step's commit: the reply."""
    parts.requests.handle(c, json.dumps({"op": op, "rid": 1, **fields}).encode())
    parts.store.commit()
    (reply,) = [r for _c, r in parts.ledger.take()]
    return reply


def refused(reply: dict[str, Any], code: str, *words: str) -> None:
    assert not reply["ok"] and reply["code"] == code, reply
    assert all(w in reply["error"] for w in words), reply["error"]


def made(parts: Parts, root: Conn, name: str, user: str = "nobody", read_only: bool = False) -> str:
    reply = ask(parts, root, "token_create", name=name, user=user, read_only=read_only)
    assert reply["ok"], reply
    return str(reply["token"])


def test_tokens_are_made_listed_and_revoked_and_shown_only_when_made(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    reply = ask(parts, root, "token_create", name="ci", user="nobody", read_only=True)
    assert reply["ok"] and (reply["name"], reply["user"], reply["read_only"]) == ("ci", "nobody", True)
    assert reply["token"].startswith("tq_") and len(reply["token"]) == 3 + 43  # 32 bytes, URL-safe base64
    made(parts, root, "web", "www-data")
    listed = ask(parts, root, "token_list")["tokens"]
    assert [(t["name"], t["user"], t["read_only"]) for t in listed] == [("ci", "nobody", True),
                                                                       ("web", "www-data", False)]
    assert all(set(t) == {"name", "user", "uid", "read_only", "created_at", "usable", "why"} for t in listed)
    assert ask(parts, root, "token_revoke", name="ci")["ok"]
    assert [t["name"] for t in ask(parts, root, "token_list")["tokens"]] == ["web"]
    refused(ask(parts, root, "token_revoke", name="ci"), "not_found", "no token 'ci'")
    refused(ask(parts, root, "token_create", name="web", user="nobody"), "conflict", "token web exists")
    refused(ask(parts, root, "token_create", name="no/slash", user="nobody"), "bad_request", "invalid token name")
    refused(ask(parts, root, "token_create", name="x", user="no-such-user-here"), "bad_request", "no user")
    refused(ask(parts, root, "token_create", name="x", user="nobody\0"), "bad_request", "no user")


def test_only_root_and_admins_manage_tokens(parts: Parts, conns: list[socket.socket]) -> None:
    other = conn(conns, WWW.pw_uid, WWW.pw_gid)
    refused(ask(parts, other, "token_create", name="mine", user="www-data"), "permission", "manage tokens")
    refused(ask(parts, other, "token_list"), "permission")
    refused(ask(parts, other, "token_revoke", name="mine"), "permission")


def test_the_store_keeps_only_the_hash_of_a_token(parts: Parts, conns: list[socket.socket]) -> None:
    token = made(parts, conn(conns), "ci")
    parts.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = b"".join(p.read_bytes() for p in Path(parts.store.path).parent.glob("tq.sqlite3*"))
    assert token.encode() not in files and token[3:].encode() not in files
    digest = hashlib.sha256(token.encode()).digest()
    assert digest in files  # (the text is not there because the store holds something else, not nothing)
    assert parts.store.db.execute("SELECT name, hash, user, uid FROM tokens").fetchall() == [
        ("ci", digest, "nobody", NOBODY.pw_uid)]


def test_act_as_makes_the_connection_the_token_user_s(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    token = made(parts, root, "ci")
    gw = conn(conns)
    reply = ask(parts, gw, "act_as", token=token)
    assert reply["ok"] and (reply["user"], reply["token"], reply["read_only"]) == ("nobody", "ci", False)
    assert (gw.uid, gw.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    (job_id,) = ask(parts, gw, "submit", jobs=[{"task": "t"}])["ids"]
    assert ask(parts, root, "get", id=job_id)["job"]["submitter"] == NOBODY.pw_uid
    refused(ask(parts, gw, "act_as", token=token), "permission", "acts with token ci already")
    refused(ask(parts, gw, "token_list"), "permission")  # nobody is no admin


def test_a_token_user_changes_its_own_jobs_and_not_another_s(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    gw = conn(conns)
    assert ask(parts, gw, "act_as", token=made(parts, root, "ci"))["ok"]
    (roots,) = ask(parts, root, "submit", jobs=[{"task": "t"}])["ids"]
    (its,) = ask(parts, gw, "submit", jobs=[{"task": "t"}])["ids"]
    refused(ask(parts, gw, "cancel", id=roots), "permission", f"job {roots}")
    assert ask(parts, gw, "cancel", id=its)["ok"] and parts.jobs.find(its).state == "cancelled"  # type: ignore


def test_a_read_only_token_reads_and_changes_nothing(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    (job_id,) = ask(parts, root, "submit", jobs=[{"task": "t"}])["ids"]
    gw = conn(conns)
    assert ask(parts, gw, "act_as", token=made(parts, root, "viewer", read_only=True))["read_only"] is True
    for op, fields in [("submit", {"jobs": [{"task": "t"}]}), ("cancel", {"id": job_id}), ("retry", {"id": job_id}),
                       ("pause", {"queue": "default"}), ("forget_worker", {"instance": "1"}),
                       ("token_list", {}), ("act_as", {"token": "tq_x"})]:
        refused(ask(parts, gw, op, **fields), "permission", "token viewer is read-only")
    assert [j["id"] for j in ask(parts, gw, "list")["jobs"]] == [job_id]
    assert ask(parts, gw, "get", id=job_id)["ok"] and ask(parts, gw, "status")["ok"]
    assert parts.jobs.find(job_id).state == "queued"  # type: ignore[union-attr]


def test_only_root_and_the_gateways_may_act_for_others(parts: Parts, conns: list[socket.socket]) -> None:
    token = made(parts, conn(conns), "ci")
    www = conn(conns, WWW.pw_uid, WWW.pw_gid)
    refused(ask(parts, www, "act_as", token=token), "permission",
            f"uid {WWW.pw_uid} may not act for others: only root and [access] gateways")
    assert (www.uid, www.token) == (WWW.pw_uid, None)
    backup = pwd.getpwnam("backup")  # named in [access] gateways by the fixture
    gw = conn(conns, backup.pw_uid, backup.pw_gid)
    assert ask(parts, gw, "act_as", token=token)["ok"] and gw.uid == NOBODY.pw_uid


@pytest.mark.parametrize(("token", "code", "words"), [
    ("tq_not-a-token", "unauthorized", "no valid token"), ("", "unauthorized", "no valid token"),
    ("x" * 10_000, "unauthorized", "no valid token"),
    ("\ud800", "bad_request", "text must be UTF-8"),  # (refused as every request holding one is, before act_as)
])
def test_an_unknown_token_is_refused(parts: Parts, conns: list[socket.socket], token: str, code: str,
                                     words: str) -> None:
    made(parts, conn(conns), "ci")
    gw = conn(conns)
    refused(ask(parts, gw, "act_as", token=token), code, words)
    assert gw.uid == 0 and gw.token is None


def test_revoking_a_token_cuts_the_connections_that_act_with_it(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    token = made(parts, root, "ci")
    gw, other = conn(conns), conn(conns)
    assert ask(parts, gw, "act_as", token=token)["ok"] and ask(parts, other, "act_as", token=made(parts, root, "x"))
    assert ask(parts, gw, "ping")["ok"]
    assert ask(parts, root, "token_revoke", name="ci")["ok"]
    refused(ask(parts, gw, "ping"), "unauthorized", "token ci was revoked")
    refused(ask(parts, gw, "list"), "unauthorized")
    assert ask(parts, other, "ping")["ok"]  # another token's connection carries on
    made(parts, root, "ci")  # a new token of the same name does not bring the old one back
    refused(ask(parts, gw, "ping"), "unauthorized")
    refused(ask(parts, conn(conns), "act_as", token=token), "unauthorized")


def test_a_store_of_schema_4_gains_the_tokens_table_in_place(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.db.execute("DROP TABLE tokens")  # as tq wrote version 4
    store.db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    store.db.execute("INSERT INTO jobs (id, task, args, queue, priority, state, retries, timeout, backoff, "
                     "backoff_max, created_at) VALUES (3, 't', '[]', 'default', 0, 'dead', 0, 1, 1, 1, 0)")
    store.close()
    again = Store(str(tmp_path))
    try:
        assert again.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        assert again.tokens() == [] and [j.id for j in again.query("dead")] == [3]
        again.save_token("ci", b"h" * 32, "nobody", False, 1.0, NOBODY.pw_uid)
        again.commit()
        assert again.tokens() == [("ci", b"h" * 32, "nobody", False, 1.0, NOBODY.pw_uid)]
    finally:
        again.close()


def test_a_token_of_schema_6_takes_its_users_uid_at_first_use(tmp_path: Path, conns: list[socket.socket]) -> None:
    store = Store(str(tmp_path / "state"))
    store.db.execute("ALTER TABLE tokens DROP COLUMN uid")  # as tq wrote version 6
    store.db.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    store.db.execute("INSERT INTO tokens VALUES ('old', ?, 'nobody', 0, 1.0)", (hashlib.sha256(b"tq_old").digest(),))
    store.commit()
    store.close()
    parts = make_parts(tmp_path / "state")
    try:
        assert parts.store.tokens()[0][-1] is None
        gw = conn(conns)
        assert ask(parts, gw, "act_as", token="tq_old")["ok"] and gw.uid == NOBODY.pw_uid
        assert parts.store.tokens()[0][-1] == NOBODY.pw_uid  # kept: a later account of that name is another
    finally:
        parts.close()


def test_a_token_is_only_for_a_user_who_reaches_tq(parts: Parts, conns: list[socket.socket],
                                                    group_tq: list[str]) -> None:
    root = conn(conns)
    refused(ask(parts, root, "token_create", name="x", user="backup"), "permission",
            "permission denied: user backup is not in group tq: only root, the daemons' user and members of group "
            "tq reach tq, and a token acts only for them (add backup to the group first)")
    gw = conn(conns)
    assert ask(parts, gw, "act_as", token=made(parts, root, "ci"))["ok"]
    group_tq.remove("nobody")  # gpasswd -d nobody tq
    assert ask(parts, gw, "ping")["ok"]  # (looked up again at most once a second)
    gw.account_at -= 1.0
    refused(ask(parts, gw, "ping"), "unauthorized", "token ci: user nobody is not in group tq")
    www = made(parts, root, "web", "www-data")
    group_tq.remove("www-data")
    refused(ask(parts, conn(conns), "act_as", token=www), "unauthorized", "user www-data is not in group tq")
    group_tq.append("nobody")  # back in: its token acts again
    assert ask(parts, conn(conns), "act_as", token=made(parts, root, "ci3"))["ok"]


def test_a_token_acts_only_for_the_account_it_was_made_for(parts: Parts, conns: list[socket.socket],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = conn(conns)
    token = made(parts, root, "ci")
    gw = conn(conns)
    assert ask(parts, gw, "act_as", token=token)["ok"]
    reused = pwd.struct_passwd(("nobody", "x", 4343, NOBODY.pw_gid, "", "/", "/bin/sh"))  # userdel; useradd
    monkeypatch.setattr(pwd, "getpwnam", lambda name: reused if name == "nobody" else NOBODY)
    gw.account_at -= 1.0
    refused(ask(parts, gw, "ping"), "unauthorized", f"token ci: made for uid {NOBODY.pw_uid}; user 'nobody' is "
                                                    "now uid 4343, another account")
    refused(ask(parts, conn(conns), "act_as", token=token), "unauthorized", "another account")


def test_the_daemons_user_makes_and_revokes_its_own_token(tmp_path: Path, conns: list[socket.socket],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons not run by root (make run's, a developer's): their user may make a token for itself, which the
    developer's tq-gateway then acts with; another admin may not."""
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[access]\nadmins = ["nogroup"]\n')
    try:
        monkeypatch.setattr(os, "geteuid", lambda: NOBODY.pw_uid)  # the daemons' user: nobody
        own = conn(conns, NOBODY.pw_uid, NOBODY.pw_gid)
        assert ask(parts, own, "token_create", name="mine", user="nobody")["ok"]
        other = conn(conns, 33, NOBODY.pw_gid)  # www-data in the admin group
        refused(ask(parts, other, "token_create", name="theirs", user="nobody"), "permission",
                f"permission denied: only root and nobody itself may make a token that acts as nobody (uid "
                f"{NOBODY.pw_uid})")
        refused(ask(parts, other, "token_revoke", name="mine"), "permission", "only root and nobody itself may revoke")
        assert ask(parts, own, "token_revoke", name="mine")["ok"]
    finally:
        monkeypatch.undo()
        parts.close()


def test_only_root_makes_or_revokes_a_token_that_acts_as_root(tmp_path: Path, conns: list[socket.socket]) -> None:
    parts = make_parts(tmp_path / "state", '[tasks."#"]\nhandler = "echo"\n[access]\nadmins = ["nogroup"]\n')
    try:
        root, admin = conn(conns), conn(conns, NOBODY.pw_uid, NOBODY.pw_gid)  # nobody: in the admin group nogroup
        refused(ask(parts, admin, "token_create", name="r", user="root"), "permission",
                "permission denied: only root may make a token that acts as root (uid 0)")
        made(parts, root, "roots", "root")
        refused(ask(parts, admin, "token_revoke", name="roots"), "permission",
                "permission denied: only root may revoke a token that acts as root (uid 0)")
        assert ask(parts, admin, "token_create", name="w", user="www-data")["ok"]  # an admin's own rights: kept
        assert ask(parts, admin, "token_revoke", name="w")["ok"]
        assert [t["name"] for t in ask(parts, root, "token_list")["tokens"]] == ["roots"]
    finally:
        parts.close()


def test_list_pages_with_after(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    ids = ask(parts, root, "submit", jobs=[{"task": "t"}] * 7)["ids"]
    pages, after = [], None
    while page := [j["id"] for j in ask(parts, root, "list", limit=3, after=after)["jobs"]]:
        pages.append(page)
        after = page[-1]
    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[:1]]
    assert [j["id"] for j in ask(parts, root, "list", state="queued", after=ids[2])["jobs"]] == ids[1::-1]
    refused(ask(parts, root, "list", after=0), "bad_request", "after must be a job id")
    refused(ask(parts, root, "list", after="5"), "bad_request", "'after'")


@pytest.mark.parametrize("state", ["done", None])  # (dead and cancelled: tests/unit/test_list_pages.py)
def test_a_page_deep_in_the_store_starts_at_after_by_the_primary_key(parts: Parts, state: str | None) -> None:
    where = "state=? AND " if state else ""
    sql = f"EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE {where}id<? ORDER BY id DESC LIMIT 50"
    plan = " ".join(row[-1] for row in parts.store.db.execute(sql, (state, 10) if state else (10,)))
    assert "INTEGER PRIMARY KEY (rowid<?)" in plan and "TEMP B-TREE" not in plan, plan  # a range, no sort


def test_events_since_a_time(parts: Parts, conns: list[socket.socket]) -> None:
    now = time.time()
    for i, task in enumerate(("first", "second", "third")):  # (as the job events' logger appends them)
        parts.captured.extend((now + i, "submitted", i + 1, task, "default", None, None, ""))
    parts.stream.committed()  # (the step's commit: they happened)
    root = conn(conns)
    assert [e["task"] for e in ask(parts, root, "events", after=now + 0.5)["events"]] == ["second", "third"]
    assert [e["task"] for e in ask(parts, root, "events", after=now + 0.5, limit=1)["events"][1:]] == ["third"]
    assert [e["task"] for e in ask(parts, root, "events")["events"]] == ["first", "second", "third"]
    refused(ask(parts, root, "events", after="x"), "bad_request", "'after'")


def test_a_token_made_in_a_step_whose_commit_failed_is_no_token(parts: Parts, conns: list[socket.socket]) -> None:
    root = conn(conns)
    parts.requests.handle(root, json.dumps({"op": "token_create", "rid": 1, "name": "ci", "user": "nobody"}).encode())
    parts.store.rollback()  # as tq-host's step does when the commit fails (disk full)
    parts.requests.undo(parts.store.next_id, "store write failed: disk full")
    (reply,) = [r for _c, r in parts.ledger.take()]
    refused(reply, "unavailable", "disk full")
    assert ask(parts, root, "token_list")["tokens"] == []
