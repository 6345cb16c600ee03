"""Access: the store and the socket belong to root and group tq, the POSIX queues to the daemons' user alone; a
member of group tq who is not the owner reaches tq only through the socket, anyone else is refused (tqctl:
exit 4); the submitter's uid is recorded, and decides who may cancel and retry a job. Real users, setpriv."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MEMBER, TEST_NAMES
from harness import Suite, wait_until
from tq.client import Client, Unauthorized

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates group tq and a member)")


def as_user(user: str, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv],
                          env=env, capture_output=True, text=True, timeout=60)


def test_files_are_for_root_and_group_tq_and_the_queues_for_the_daemons_alone(suite: Suite,
                                                                               member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    gid = grp.getgrnam("tq").gr_gid
    state = suite.dir / "state"
    for path in (state / "tq.sqlite3", state / "tq.sqlite3-wal", suite.dir / "tq.sock"):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid), path
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o750
    probe = ("import posix_ipc, sys\n"
             "try:\n"
             f"    q = posix_ipc.MessageQueue('{suite.prefix}.host')\n"
             "    q.send(b'garbage from a member of group tq')\n"
             "    print('sent')\n"
             "except posix_ipc.PermissionsError:\n"
             "    print('refused')\n")
    if os.path.ismount("/dev/mqueue"):  # conftest mounts it for root
        for queue in (f"{suite.prefix}.host", f"{suite.prefix}.w.1"):
            assert stat.S_IMODE(os.stat(f"/dev/mqueue{queue}").st_mode) == 0o600
    # A member cannot forge a result (or anything else) on the queues: only the socket, where its uid is known.
    assert as_user(MEMBER, sys.executable, "-c", probe, env=suite.env).stdout == "refused\n"
    assert as_user("nobody", sys.executable, "-c", probe, env=suite.env).stdout == "refused\n"
    assert suite.tqctl("submit", "--wait", "task-1").returncode == 0
    assert suite.client().status()["malformed_messages"] == 0


def test_member_submits_with_its_uid_recorded_and_others_get_exit_4(suite: Suite,
                                                                     member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    r = as_user(MEMBER, *tqctl, "submit", "--wait", "--json", "task-1", env=suite.env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["submitter"] == member.pw_uid
    shown = as_user(MEMBER, *tqctl, "show", str(job["id"]), env=suite.env)
    assert f"submitter:   {member.pw_uid}" in shown.stdout
    r = as_user("nobody", *tqctl, "submit", "task-1", env=suite.env)
    assert r.returncode == 4
    assert "permission denied" in r.stderr and "add yourself to group tq" in r.stderr


OTHER, ADMIN, DEPLOYER = f"{TEST_NAMES}-other", f"{TEST_NAMES}-admin", f"{TEST_NAMES}-deployer"
ADMINS, DEPLOY = f"{TEST_NAMES}-admins", f"{TEST_NAMES}-deploy"


@pytest.fixture
def people(member: pwd.struct_passwd) -> Iterator[None]:
    """Besides the member: another member, a member of the admin group, and a member of a deploy group."""
    for group in (ADMINS, DEPLOY):
        subprocess.run(["groupadd", "--system", group], check=True)
    for user, groups in ((OTHER, "tq"), (ADMIN, f"tq,{ADMINS}"), (DEPLOYER, f"tq,{DEPLOY}")):
        subprocess.run(["useradd", "--system", "--no-create-home", "-G", groups, user], check=True)
    try:
        yield
    finally:
        for user in (OTHER, ADMIN, DEPLOYER):
            subprocess.run(["userdel", user], check=False)
        for group in (ADMINS, DEPLOY):
            subprocess.run(["groupdel", group], check=False)


def test_only_the_submitter_root_and_admins_may_cancel_or_retry_a_job(suite: Suite, people: None) -> None:
    suite.write_config(f'\n[access]\nadmins = ["{ADMINS}"]\n')
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    jobs = [int(as_user(MEMBER, *tqctl, "submit", "task-1", "--delay", "1h", env=suite.env).stdout)
            for _ in range(3)]
    r = as_user(OTHER, *tqctl, "cancel", str(jobs[0]), env=suite.env)
    assert r.returncode == 4 and "only its submitter" in r.stderr and "[access] admins" in r.stderr
    r = as_user(OTHER, *tqctl, "cancel", "--state", "delayed", env=suite.env)  # refused for every job: exit 4
    assert (r.returncode, r.stdout, r.stderr) == (
        4, "", "tqctl: cancelled 0 job(s); 3 matching job(s) are not yours to change\n")
    r = as_user(OTHER, *tqctl, "--json", "cancel", "--state", "delayed", env=suite.env)
    assert (r.returncode, json.loads(r.stdout)) == (4, {"count": 0, "ids": [], "refused": 3, "not_yours": 3,
                                                        "reasons": []})
    own = int(as_user(OTHER, *tqctl, "submit", "task-1", "--delay", "1h", env=suite.env).stdout)
    r = as_user(OTHER, *tqctl, "cancel", "--state", "delayed", env=suite.env)  # some changed: exit 0, the note
    assert (r.returncode, r.stdout) == (0, "cancelled 1 job(s); 3 matching job(s) are not yours to change\n")
    assert suite.client().get(own)["state"] == "cancelled"
    assert as_user(MEMBER, *tqctl, "cancel", str(jobs[0]), env=suite.env).returncode == 0
    assert as_user(ADMIN, *tqctl, "cancel", str(jobs[1]), env=suite.env).returncode == 0
    assert suite.tqctl("cancel", str(jobs[2])).returncode == 0  # root
    r = as_user(OTHER, *tqctl, "retry", str(jobs[0]), env=suite.env)
    assert r.returncode == 4 and "permission denied" in r.stderr
    assert as_user(ADMIN, *tqctl, "retry", str(jobs[0]), env=suite.env).returncode == 0
    assert suite.client().wait(jobs[0], timeout=10)["state"] == "done"  # retried: it runs now


def test_a_queue_takes_submits_only_from_the_users_and_groups_it_names(suite: Suite, people: None) -> None:
    suite.write_config(f'\n[queues.mail]\nsubmit = ["{MEMBER}", "@{DEPLOY}"]\n')
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    for user in (MEMBER, DEPLOYER):
        r = as_user(user, *tqctl, "submit", "--queue", "mail", "task-1", env=suite.env)
        assert r.returncode == 0, (user, r.stderr)
    r = as_user(OTHER, *tqctl, "submit", "--queue", "mail", "task-1", env=suite.env)
    assert r.returncode == 4
    assert f"queue mail takes submits only from {MEMBER}, @{DEPLOY} ([queues.mail] submit)" in r.stderr
    assert as_user(OTHER, *tqctl, "submit", "task-1", env=suite.env).returncode == 0  # other queues: every member
    assert suite.tqctl("submit", "--queue", "mail", "task-1").returncode == 0  # root


def test_only_root_and_admins_may_pause_or_resume_a_queue_and_every_member_may_list_them(suite: Suite,
                                                                                          people: None) -> None:
    suite.write_config(f'\n[access]\nadmins = ["{ADMINS}"]\n')
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    r = as_user(MEMBER, *tqctl, "pause", "default", env=suite.env)
    assert r.returncode == 4 and "only root and members of the admin groups" in r.stderr and ADMINS in r.stderr
    assert as_user(ADMIN, *tqctl, "pause", "default", env=suite.env).stdout == "queue default paused\n"
    listed = json.loads(as_user(MEMBER, *tqctl, "queues", "--json", env=suite.env).stdout)
    assert [q["paused"] for q in listed if q["queue"] == "default"] == [True]
    assert as_user(MEMBER, *tqctl, "resume", "default", env=suite.env).returncode == 4
    assert suite.tqctl("resume", "default").stdout == "queue default resumed\n"  # root


def test_a_user_taken_out_of_an_admin_group_may_no_longer_steer_without_a_reload(suite: Suite, people: None) -> None:
    """tq-host reads a caller's groups again once they are a second old: `gpasswd -d` counts without a reload (as
    a token's user leaving group tq does)."""
    suite.write_config(f'\n[access]\nadmins = ["{ADMINS}"]\n')
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    assert as_user(ADMIN, *tqctl, "pause", "default", env=suite.env).returncode == 0
    subprocess.run(["gpasswd", "-d", ADMIN, ADMINS], check=True, capture_output=True)
    wait_until(lambda: as_user(ADMIN, *tqctl, "resume", "default", env=suite.env).returncode == 4, 10,
               "the admin's resume refused once out of the admin group")
    subprocess.run(["gpasswd", "-a", ADMIN, ADMINS], check=True, capture_output=True)
    wait_until(lambda: as_user(ADMIN, *tqctl, "resume", "default", env=suite.env).returncode == 0, 10,
               "the resume taken once back in it")


def test_only_root_and_admins_may_forget_a_worker(suite: Suite, people: None) -> None:
    suite.write_config(f'\n[access]\nadmins = ["{ADMINS}"]\n')
    _host, (w1,) = suite.start(workers=1)
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    client = suite.client()
    wait_until(lambda: client.workers()[0]["state"] == "stopped", 10, "worker 1 stopped")
    r = as_user(MEMBER, *tqctl, "workers", "--forget", "1", env=suite.env)
    assert r.returncode == 4 and "may forget a worker" in r.stderr and ADMINS in r.stderr, r.stderr
    r = as_user(ADMIN, *tqctl, "workers", "--forget", "1", env=suite.env)
    assert (r.returncode, r.stdout) == (0, "forgot worker 1 (stopped)\n"), r.stderr
    assert client.workers() == []


# A gateway's connection, in a process of its own as some user: act_as with the token in argv[1], then the
# request in argv[2] (a Client method and its JSON arguments); prints the outcome as a JSON line.
ACT = """
import json, sys
from tq.client import Client, TqError
c = Client(config=sys.argv[3])
try:
    c.act_as(sys.argv[1])
    method, args = json.loads(sys.argv[2])
    print(json.dumps({"ok": getattr(c, method)(*args)}))
except TqError as e:
    print(json.dumps({"error": type(e).__name__, "exit": e.exit_code, "message": str(e)}))
"""


def act(user: str, suite: Suite, token: str, method: str, *args: object) -> dict[str, object]:
    r = as_user(user, sys.executable, "-c", ACT, token, json.dumps([method, list(args)]), str(suite.config),
                env=suite.env)
    assert r.returncode == 0 and r.stdout, r.stderr
    return dict(json.loads(r.stdout))


def test_tokens_act_as_their_user_only_through_root_and_the_gateways(suite: Suite, people: None) -> None:
    suite.write_config(f'\n[access]\ngateways = ["{OTHER}"]\n')
    suite.start(workers=1)
    made = suite.tqctl("token", "create", "ci", "--user", MEMBER)
    assert made.returncode == 0 and made.stdout.startswith("tq_") and len(made.stdout.splitlines()) == 1, made
    token = made.stdout.strip()
    # Not root, not in [access] gateways: refused, whatever the token.
    refused = act(MEMBER, suite, token, "status")
    assert refused["error"] == "PermissionDenied" and refused["exit"] == 4, refused
    assert "may not act for others: only root and [access] gateways" in str(refused["message"])
    # A gateway: its requests are the token user's.
    submitted = act(OTHER, suite, token, "submit", "task-1")
    job = suite.client().wait(int(submitted["ok"]), timeout=10)  # type: ignore[call-overload]
    assert job["submitter"] == pwd.getpwnam(MEMBER).pw_uid and job["state"] == "done"
    bad = act(OTHER, suite, "tq_" + "A" * 43, "status")
    assert (bad["error"], bad["exit"]) == ("Unauthorized", 4) and "no valid token" in str(bad["message"])
    listed = json.loads(suite.tqctl("--json", "token", "list").stdout)
    assert [(t["name"], t["user"], t["read_only"]) for t in listed] == [("ci", MEMBER, False)]
    assert "ci" in suite.tqctl("token", "list").stdout
    assert suite.tqctl("token", "list", user=MEMBER).returncode == 4  # (refused: tqctl as a non-admin)
    # A live connection that acts with the token is cut by its revocation.
    live = suite.client()
    assert live.act_as(token) == {"user": MEMBER, "token": "ci", "read_only": False}
    assert live.list_jobs()[0]["id"] == job["id"]
    assert suite.tqctl("token", "revoke", "ci").returncode == 0
    with pytest.raises(Unauthorized, match="token ci was revoked"):
        live.list_jobs()
    assert suite.tqctl("token", "revoke", "ci").returncode == 5
    # The store kept the token's hash, never its text.
    assert suite.store_rows("SELECT count(*) FROM tokens") == [(0,)]
    state = suite.dir / "state"
    assert all(token.encode() not in p.read_bytes() for p in state.glob("tq.sqlite3*"))


def test_a_token_whose_user_is_deleted_is_refused_on_the_connection_already_acting_with_it(
        suite: Suite, member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    token = suite.tqctl("token", "create", "gone", "--user", MEMBER).stdout.strip()
    live = suite.client()  # as a gateway's open link to tq-host
    assert live.act_as(token)["user"] == MEMBER
    job_id = live.submit("task-1")
    assert suite.client().wait(job_id, timeout=10)["submitter"] == member.pw_uid
    subprocess.run(["userdel", MEMBER], check=True)
    refused = refused_live(live)
    assert f"token gone: no user '{MEMBER}' on this system now (the token was made for uid {member.pw_uid})" in str(
        refused)
    with pytest.raises(Unauthorized, match="on this system now"):
        suite.client().act_as(token)


def test_token_list_shows_a_token_whose_user_is_deleted_as_unusable_and_why(suite: Suite,
                                                                           member: pwd.struct_passwd) -> None:
    suite.host()
    for name, user in (("gone", MEMBER), ("kept", "root")):
        assert suite.tqctl("token", "create", name, "--user", user).returncode == 0
    assert [line.split()[-1] for line in suite.tqctl("token", "list").stdout.splitlines()] == ["STATE", "usable",
                                                                                            "usable"]
    subprocess.run(["userdel", MEMBER], check=True)
    why = f"no user '{MEMBER}' on this system now (the token was made for uid {member.pw_uid})"
    r = suite.tqctl("token", "list")
    assert r.returncode == 0 and r.stderr == "", r
    header, gone, kept = r.stdout.splitlines()
    assert header.split() == ["NAME", "USER", "ACCESS", "CREATED", "STATE"]
    assert gone.startswith("gone ") and gone.endswith(f" unusable: {why}"), r.stdout
    assert kept.startswith("kept ") and kept.endswith(" usable"), r.stdout
    listed = {t["name"]: t for t in json.loads(suite.tqctl("--json", "token", "list").stdout)}
    assert (listed["gone"]["user"], listed["gone"]["uid"], listed["gone"]["usable"], listed["gone"]["why"]) == (
        MEMBER, member.pw_uid, False, why)
    assert (listed["kept"]["uid"], listed["kept"]["usable"], listed["kept"]["why"]) == (0, True, None)


# ---- a token is no way round group tq (trial-C #2) -------------------------------------------------------------

OUTSIDER = f"{TEST_NAMES}-outsider"


@pytest.fixture
def outsider(member: pwd.struct_passwd) -> Iterator[str]:
    """A user who is not in group tq (locally: permission denied on the socket, exit 4)."""
    subprocess.run(["useradd", "--system", "--no-create-home", OUTSIDER], check=True)
    try:
        yield OUTSIDER
    finally:
        subprocess.run(["userdel", OUTSIDER], check=False)


def refused_live(live: Client) -> Unauthorized:
    """Await the refusal of a connection that acts with a token (its user is looked up again once a second)."""
    def refusal() -> Unauthorized | None:
        try:
            live.status()
        except Unauthorized as e:
            return e
        return None

    refused = wait_until(refusal, what="the token refused on the connection acting with it")
    assert isinstance(refused, Unauthorized) and refused.exit_code == 4
    return refused


def test_a_token_is_not_made_for_a_user_outside_group_tq(suite: Suite, outsider: str) -> None:
    suite.start(workers=1)
    r = suite.tqctl("token", "create", "out", "--user", outsider)
    assert (r.returncode, r.stdout) == (4, ""), r
    assert r.stderr == (f"tqctl: permission denied: user {outsider} is not in group tq: only root, the daemons' "
                        "user and members of group tq reach tq, and a token acts only for them (add "
                        f"{outsider} to the group first)\n")
    assert as_user(outsider, sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "status",
                   env=suite.env).returncode == 4  # as locally
    assert suite.store_rows("SELECT count(*) FROM tokens") == [(0,)]


def test_a_token_stops_when_its_user_leaves_group_tq(suite: Suite, member: pwd.struct_passwd) -> None:
    suite.start(workers=1)
    token = suite.tqctl("token", "create", "ci", "--user", MEMBER).stdout.strip()
    live = suite.client()  # as a gateway's open link to tq-host
    assert live.act_as(token)["user"] == MEMBER and live.submit("task-1")  # a member's token works
    subprocess.run(["gpasswd", "--delete", MEMBER, "tq"], check=True, capture_output=True)
    message = f"token ci: user {MEMBER} is not in group tq"
    assert message in str(refused_live(live))
    with pytest.raises(Unauthorized, match=message):
        suite.client().act_as(token)


@pytest.mark.parametrize("in_tq", [False, True])
def test_a_token_does_not_pass_to_a_later_account_of_its_users_name(suite: Suite, member: pwd.struct_passwd,
                                                                    in_tq: bool) -> None:
    suite.start(workers=1)
    token = suite.tqctl("token", "create", "bob", "--user", MEMBER).stdout.strip()
    live = suite.client()
    assert live.act_as(token)["user"] == MEMBER
    subprocess.run(["userdel", MEMBER], check=True)
    assert "on this system now" in str(refused_live(live))
    # In group tq it is refused for its other uid; out of it, even under the same uid (freed by userdel), for that.
    taken = {p.pw_uid for p in pwd.getpwall()}
    uid = next(u for u in range(999, 100, -1) if u not in taken and u != member.pw_uid) if in_tq else member.pw_uid
    subprocess.run(["useradd", "--system", "--no-create-home", "-u", str(uid), *(["-G", "tq"] * in_tq), MEMBER],
                   check=True)  # a new account of that name (the fixture deletes it)
    message = (f"token bob: made for uid {member.pw_uid}; user '{MEMBER}' is now uid {uid}, another account"
               if in_tq else f"token bob: user {MEMBER} is not in group tq")
    with pytest.raises(Unauthorized, match=message):
        suite.client().act_as(token)
    assert "bob" in suite.tqctl("token", "list").stdout  # (listed until revoked: the name says whose it was)


def test_only_root_makes_or_revokes_a_token_that_acts_as_root(suite: Suite, people: None) -> None:
    suite.write_config(f'\n[access]\nadmins = ["{ADMINS}"]\n')
    suite.start(workers=1)
    tqctl = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config)]
    r = as_user(ADMIN, *tqctl, "token", "create", "mine", "--user", "root", env=suite.env)
    assert (r.returncode, r.stderr) == (4, "tqctl: permission denied: only root may make a token that acts as "
                                           "root (uid 0)\n")
    assert suite.tqctl("token", "create", "roots", "--user", "root").returncode == 0
    r = as_user(ADMIN, *tqctl, "token", "revoke", "roots", env=suite.env)
    assert (r.returncode, r.stderr) == (4, "tqctl: permission denied: only root may revoke a token that acts as "
                                           "root (uid 0)\n")
    r = as_user(ADMIN, *tqctl, "token", "create", "others", "--user", OTHER, env=suite.env)  # a member's: may
    assert r.returncode == 0 and as_user(ADMIN, *tqctl, "token", "revoke", "others", env=suite.env).returncode == 0
    assert [t["name"] for t in json.loads(suite.tqctl("--json", "token", "list").stdout)] == ["roots"]


@pytest.fixture
def gateway_user() -> Iterator[tuple[pwd.struct_passwd, bool]]:
    """User tq-gateway (as the package makes it), made here unless it exists; and whether it was absent."""
    try:
        yield pwd.getpwnam("tq-gateway"), False
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "tq-gateway"], check=True)
    try:
        yield pwd.getpwnam("tq-gateway"), True
    finally:
        subprocess.run(["userdel", "tq-gateway"], check=False)
        subprocess.run(["groupdel", "tq-gateway"], check=False, capture_output=True)


def test_config_check_as_root_says_a_tls_key_tq_gateway_cannot_read(suite: Suite, gateway_user: tuple[
        pwd.struct_passwd, bool], tmp_path: Path) -> None:
    """Root reads every file; tq-gateway (its unit's user) would not start on a key only root reads, and the
    restart takes the socket down with it (trial C #8): config check names the file and the user."""
    user, made = gateway_user
    top = Path(tempfile.mkdtemp(prefix="tqtest-tls-", dir="/var/lib"))  # (not /tmp: the unit hides it, PrivateTmp)
    try:
        top.chmod(0o755)
        cert, key = top / "cert.pem", top / "key.pem"
        for f in (cert, key):
            f.write_text("PEM\n")
            f.chmod(0o644)
        key.chmod(0o600)
        extra = f'[gateway]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        suite.write_config(extra)
        r = suite.tqctl("config", "check")
        assert r.returncode == 2 and r.stdout == "", r
        assert f"gateway.tls_key: user tq-gateway cannot read {key} (root:root -rw-------)" in r.stderr, r.stderr
        assert "tls_cert" not in r.stderr, r.stderr
        os.chown(key, 0, user.pw_gid)
        key.chmod(0o640)
        r = suite.tqctl("config", "check")
        assert r.returncode == 0 and r.stderr == "", r
        top.chmod(0o700)  # a directory it cannot search
        r = suite.tqctl("config", "check")
        assert r.returncode == 2 and f"user tq-gateway cannot search directory {top}" in r.stderr, r.stderr
        top.chmod(0o755)
        hidden = tmp_path / "key.pem"  # under /tmp: PrivateTmp= gives the gateway a /tmp of its own
        hidden.write_text("PEM\n")
        suite.write_config(f'[gateway]\ntls_cert = "{cert}"\ntls_key = "{hidden}"\n')
        r = suite.tqctl("config", "check")
        assert r.returncode == 2 and "is under /tmp, which the unit hides from user tq-gateway" in r.stderr, r
        if made:  # no such user: said, not checked
            subprocess.run(["userdel", "tq-gateway"], check=True)
            suite.write_config(extra)
            r = suite.tqctl("config", "check")
            assert r.returncode == 0 and "there is no user tq-gateway on this machine" in r.stderr, r
    finally:
        shutil.rmtree(top)
