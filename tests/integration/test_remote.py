"""Remote tqctl and Client through tq-gateway (docs/gateway.md): real tq-host and worker from the harness, a real
tq-gateway subprocess, and each tqctl command run twice, locally and with --url/--token-file, to the same exit
status and the same output (times, ages, sizes and ids, which must differ, normalised)."""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

import tlsfiles
from harness import Gateway, Suite, wait_until
from tq import remote
from tq.client import Client, HostUnreachable, JobTimeout, NotFound, PermissionDenied, Refused

Run = subprocess.CompletedProcess[str]


class Pair:
    """tqctl on this suite, locally (`local`) and through the gateway (`remote`)."""

    def __init__(self, suite: Suite, gw: Gateway, token_file: Path) -> None:
        self.suite, self.gw, self.token_file = suite, gw, token_file

    @property
    def remote_args(self) -> list[str]:
        return ["--url", self.gw.url, "--token-file", str(self.token_file)]

    def local(self, *args: str, input: str | None = None) -> Run:
        return self.suite.tqctl(*args, input=input)

    def remote(self, *args: str, input: str | None = None) -> Run:
        return self.suite.tqctl(*self.remote_args, *args, input=input)

    def same(self, *args: str, norm: Callable[[str], str] | None = None, input: str | None = None) -> Run:
        """Run `args` both ways; assert the same exit status, stdout and stderr (after `norm`)."""
        here, there = self.local(*args, input=input), self.remote(*args, input=input)
        fix = norm or times
        assert (here.returncode, fix(here.stdout), fix(here.stderr)) == (
            there.returncode, fix(there.stdout), fix(there.stderr)), (args, here, there)
        return there


def times(text: str) -> str:
    """Times, ages and spans (`3s`, `0.1s ago`, `Dec 03 20:06:50.139`, `2026-12-03 20:06:50`) as `~`; runs of
    spaces as one (a table's columns follow their widest value)."""
    text = re.sub(r"\b\w{3} \d\d \d\d:\d\d:\d\d\.\d{3}\b", "~", text)
    text = re.sub(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", "~", text)
    text = re.sub(r"\b\d+(\.\d+)?(ms|s|m|h|d)\b( ago)?", "~", text)
    return re.sub(r" +", " ", text)


def numbers(text: str) -> str:
    """Every number as `N` (what changes from one moment to the next: pids aside, sizes, CPU, counts in flight)."""
    return re.sub(r" +", " ", re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", times(text)))


def ids(*numbers: int) -> Callable[[str], str]:
    """`times`, and these job ids as `ID`."""
    pattern = re.compile(r"\b(" + "|".join(map(str, numbers)) + r")\b")
    return lambda text: pattern.sub("ID", times(text))


@pytest.fixture
def pair(suite: Suite) -> Iterator[Pair]:
    suite.write_config('[schedules.hourly]\nevery = "1h"\ntask = "tick"\n')
    suite.start(workers=1)
    gw = suite.gateway()  # (its token: root's)
    token_file = suite.dir / "token"
    token_file.write_text(f"{gw.token}\n")
    token_file.chmod(0o600)
    yield Pair(suite, gw, token_file)


def job_of(run: Run) -> int:
    assert run.returncode == 0, run
    return int(run.stdout.strip())


# ---- each command, both ways -------------------------------------------------------------------------------


def test_submit_prints_an_id_both_ways_and_the_jobs_are_alike(pair: Pair) -> None:
    a, b = job_of(pair.local("submit", "echo", "x", "--delay", "1h")), job_of(pair.remote("submit", "echo", "x",
                                                                                          "--delay", "1h"))
    assert b == a + 1
    pair.same("show", str(a), norm=ids(a, b))
    assert times(pair.local("show", str(a)).stdout).replace(str(a), "ID") == (
        times(pair.remote("show", str(b)).stdout).replace(str(b), "ID"))
    pair.same("submit", "echo", "x", "--delay", "1h", "--json", norm=numbers)


def test_submit_wait_and_result(pair: Pair) -> None:
    done = pair.same("submit", "--wait", "echo", "hello")
    assert done.stdout.strip() and done.returncode == 0
    jid = job_of(pair.local("submit", "echo", "r"))
    pair.same("result", "--wait", "--wait-timeout", "10s", str(jid))
    pair.same("result", str(jid))
    pair.same("result", str(jid), "--json")
    late = job_of(pair.local("submit", "echo", "later", "--delay", "1h"))
    pair.same("result", str(late))  # not finished: exit 6
    pair.same("result", "--wait", "--wait-timeout", "0.3s", str(late))
    pair.same("result", "--wait", "--wait-timeout", "0.3s", str(jid), str(late))
    for wait in ([], ["--wait"]):  # an id no job has among them: the others printed all the same, exit 5
        r = pair.same("result", *wait, str(jid), "999999", norm=ids(jid))
        assert (r.returncode, r.stdout.split(": ")[0], r.stderr) == (5, str(jid), "tqctl: no job 999999\n"), r
    r = pair.same("result", "--json", str(jid), "999999", norm=ids(jid))
    assert [j.get("error") for j in json.loads(r.stdout)] == [None, "no job 999999"] and r.returncode == 5


def test_submit_batch_prints_every_id(pair: Pair) -> None:
    lines = "".join(json.dumps({"task": "echo", "args": [str(i)], "delay": "1h"}) + "\n" for i in range(5))
    here, there = pair.local("submit", "--batch", "-", input=lines), pair.remote("submit", "--batch", "-", input=lines)
    assert here.returncode == there.returncode == 0, (here, there)
    first, second = map(int, here.stdout.split()), list(map(int, there.stdout.split()))
    assert [j + 5 for j in first] == second
    pair.same("submit", "--batch", "-", input='{"task": "echo", "colour": 1}\n')  # refused before sending: exit 2


def test_submit_a_chain_and_through_an_exchange(pair: Pair) -> None:
    here = pair.local("submit", "echo", "a", "--then", "echo b")
    there = pair.remote("submit", "echo", "a", "--then", "echo b")
    assert here.returncode == there.returncode == 0 and len(there.stdout.split()) == 2, (here, there)


def test_list_with_filters(pair: Pair) -> None:
    for i in range(3):
        pair.local("submit", "echo", str(i), "--delay", "1h", "--queue", "default")
    pair.same("list")
    pair.same("list", "--state", "delayed", "--limit", "2")
    pair.same("list", "--task", "echo", "--queue", "default", "--json")
    pair.same("list", "--state", "dead")


def test_cancel_and_retry_one_and_by_filters(pair: Pair) -> None:
    a = job_of(pair.local("submit", "echo", "c", "--delay", "1h"))
    b = job_of(pair.local("submit", "echo", "c", "--delay", "1h"))
    norm = ids(a, b)
    here, there = pair.local("cancel", str(a)), pair.remote("cancel", str(b))
    assert (here.returncode, norm(here.stdout)) == (there.returncode, norm(there.stdout)) == (0, "job ID cancelled\n")
    pair.same("cancel", str(a))  # cancelled already: conflict, exit 2
    here, there = pair.local("retry", str(a)), pair.remote("retry", str(b))
    assert (here.returncode, norm(here.stdout)) == (there.returncode, norm(there.stdout)), (here, there)
    for task in ("bulk.here", "bulk.there"):
        for _ in range(2):
            pair.local("submit", task, "--delay", "1h")
    here, there = pair.local("cancel", "--task", "bulk.here"), pair.remote("cancel", "--task", "bulk.there")
    assert (here.returncode, here.stdout) == (there.returncode, there.stdout) == (0, "cancelled 2 job(s)\n")
    here = pair.local("retry", "--task", "bulk.here", "--state", "cancelled")
    there = pair.remote("retry", "--task", "bulk.there", "--state", "cancelled")
    assert (here.returncode, here.stdout) == (there.returncode, there.stdout) == (0, "queued 2 job(s) again\n")
    pair.same("retry")  # neither an id nor filters: exit 2


def test_workers_queues_schedules_status(pair: Pair) -> None:
    pair.same("workers", norm=numbers)
    pair.same("workers", "--forget", "nosuch")  # not found: exit 5
    pair.same("queues")
    pair.same("queues", "--json")
    pair.same("schedules")
    pair.same("status", norm=numbers)
    pair.same("status", "--json", norm=numbers)


def test_pause_and_resume(pair: Pair) -> None:
    outputs = []
    for run in (pair.local, pair.remote):
        outputs.append([(r.returncode, r.stdout, r.stderr) for r in (run("pause", "default"), run("pause", "default"),
                                                                      run("resume", "default"))])
    assert outputs[0] == outputs[1]
    assert outputs[0][1][1] == "queue default paused (it already was paused)\n"
    pair.same("pause", "nosuchqueue")  # exit 5
    assert pair.same("pause", "").returncode == 2  # (an empty path segment: refused as tq-host refuses the name)
    assert pair.same("workers", "--forget", "").returncode == 5


def test_events_and_metrics(pair: Pair) -> None:
    pair.local("submit", "--wait", "echo", "e")
    pair.same("events", "-n", "5")
    pair.same("events", "--task", "echo", "--json")
    pair.same("metrics", norm=numbers)
    pair.same("metrics", "--json", norm=numbers)
    out = pair.suite.dir / "tq.prom"
    there = pair.remote("metrics", "-o", str(out))
    assert there.returncode == 0 and "tq_up 1" in out.read_text(), there


def _read_lines(fd: int, data: bytes, n: int, timeout: float, err: IO[bytes] | None) -> bytes:
    """`data` and what `fd` gives until it holds `n` lines, each read awaited with a deadline."""
    while data.count(b"\n") < n:
        assert select.select([fd], [], [], timeout)[0], f"no line in {timeout}s; got {data!r}"
        more = os.read(fd, 65536)
        assert more, f"it ended after {data!r}: {err.read() if err is not None else b''!r}"
        data += more
    return data


class Follower:
    """A tqctl command that goes on printing (events --follow, watch), its output read as it comes (each line
    awaited with a deadline)."""

    def __init__(self, pair: Pair, *args: str, remote: bool) -> None:
        where = pair.remote_args if remote else []
        self.proc = subprocess.Popen([sys.executable, "-m", "tq.ctl", "--config", str(pair.suite.config), *where,
                                      *args], env=pair.suite.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.data = b""

    def lines(self, n: int, timeout: float = 15.0) -> list[str]:
        """The first `n` lines it printed."""
        assert self.proc.stdout is not None
        self.data = _read_lines(self.proc.stdout.fileno(), self.data, n, timeout, self.proc.stderr)
        return self.data.decode().splitlines(keepends=True)[:n]

    def said(self, timeout: float = 15.0) -> str:
        """The first line it printed on stderr (awaited whole: a line may come in more than one write)."""
        assert self.proc.stderr is not None
        return _read_lines(self.proc.stderr.fileno(), b"", 1, timeout, None).decode()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.close()


def test_events_follow_prints_the_same_lines(pair: Pair, followers: list[Follower]) -> None:
    """The recent events first, then each new one as it happens."""
    for i in range(3):
        pair.local("submit", "--wait", "echo", str(i))
    followers += [Follower(pair, "events", "--follow", "--json", "-n", "3", remote=r) for r in (False, True)]
    here, there = (f.lines(3) for f in followers)
    assert here == there
    jid = job_of(pair.local("submit", "echo", "new"))
    here, there = (f.lines(6) for f in followers)
    assert here == there
    assert [json.loads(line).get("job") for line in there[3:]] == [jid] * 3  # submitted, assigned, done
    followers += [Follower(pair, "events", "--follow", "-n", "2", remote=r) for r in (False, True)]
    here, there = (f.lines(2) for f in followers[2:])
    assert here == there and f"job {jid} done" in there[1]


def test_watch_prints_a_status_line_and_again_after_events(pair: Pair, followers: list[Follower]) -> None:
    followers += [Follower(pair, "watch", "--interval", "0.1s", remote=r) for r in (False, True)]
    here, there = (f.lines(1) for f in followers)
    assert numbers(here[0]) == numbers(there[0])
    pair.local("submit", "echo", "w")
    here, there = (f.lines(2) for f in followers)
    assert numbers(here[1]) == numbers(there[1])


# ---- errors ------------------------------------------------------------------------------------------------


def test_unknown_job_exits_5_and_a_refused_request_2(pair: Pair) -> None:
    pair.same("show", "999999")
    pair.same("show", "999999", "--json")
    pair.same("submit", "echo", "--after", "999999")  # not found
    pair.same("submit", "echo", "--priority", "99999999999999999999")  # refused by tq-host: exit 2
    pair.same("submit", "echo", "--then", "echo", "--wait")  # refused by tqctl: exit 2


def test_an_id_of_twenty_or_more_digits_is_no_job_as_locally(pair: Pair) -> None:
    """An id no job can have is 5, `no job N`, whatever its length (trial C #3: remote said exit 2, cut short)."""
    big = "9" * 23
    for args in (("show", big), ("result", big), ("cancel", big)):
        assert pair.same(*args).returncode == 5
    assert pair.same("list", "--after", big).returncode == 2  # (tq-host's "after must be a job id (1 to ...)")
    assert pair.remote("show", big).stderr == f"tqctl: no job {big}\n"


def test_a_gateway_that_is_not_there_exits_3_naming_the_url(pair: Pair) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    r = pair.suite.tqctl("--url", url, "--token-file", str(pair.token_file), "status")
    assert r.returncode == 3 and r.stdout == "", r
    assert r.stderr == f"tqctl: tq-gateway is not reachable at {url}: Connection refused\n"


def test_tq_host_down_behind_the_gateway_exits_3(pair: Pair) -> None:
    host = next(d for d in pair.suite.daemons if d.name == "host")
    host.signal(signal.SIGTERM)
    host.wait()
    r = pair.remote("status")
    assert (r.returncode, r.stdout) == (3, ""), r
    assert r.stderr.startswith(f"tqctl: tq-gateway at {pair.gw.url} cannot reach its tq-host at "), r
    assert r.stderr.count("\n") == 1, r


def test_submit_wait_cut_off_by_a_host_restart_says_the_job_stays_submitted(pair: Pair) -> None:
    """Exit 3 as before, and the job's id as Ctrl-C gives it: a script that retries on 3 must not submit it twice."""
    argv = [sys.executable, "-m", "tq.ctl", "--config", str(pair.suite.config)]
    waiting = [subprocess.Popen([*argv, *extra, "submit", "echo", way, "--delay", "1h", "--wait"], env=pair.suite.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for way, extra in (("local", []), ("remote", pair.remote_args))]
    client = pair.suite.client()
    wait_until(lambda: len(client.list_jobs(state="delayed")) == 2, what="both jobs submitted")
    ids = {j["args"][0]: j["id"] for j in client.list_jobs()}
    host = next(d for d in pair.suite.daemons if d.name == "host")
    host.signal(signal.SIGTERM)
    host.wait()
    for way, proc in zip(("local", "remote"), waiting, strict=True):
        out, err = proc.communicate(timeout=60)
        jid = ids[way]
        assert (proc.returncode, out) == (3, ""), (way, proc.returncode, err)
        assert err.endswith(f"; job {jid} stays submitted (tqctl result --wait {jid})\n") and err.count("\n") == 1, err


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--url", "http://127.0.0.1:1"], {}, "--url http://127.0.0.1:1 needs --token-file FILE (or TQ_TOKEN_FILE)"),
    (["--token-file", "/nonexistent"], {}, "--token-file and --ca-file go with --url"),
    (["--url", "ftp://h", "--token-file", "{token}"], {}, "not a URL of tq-gateway: 'ftp://h'"),
    (["--url", "http://h:port", "--token-file", "{token}"], {}, "not a URL of tq-gateway"),
    (["--url", "http://127.0.0.1:1", "--token-file", "/nonexistent"], {},
     "cannot read the token file /nonexistent: No such file or directory"),
    (["--url", "http://127.0.0.1:1", "--token-file", "{empty}"], {}, "the token file {empty} is empty"),
    ([], {"TQ_URL": "http://127.0.0.1:1"}, "--url http://127.0.0.1:1 needs --token-file"),
    ([], {"TQ_URL": "http://127.0.0.1:1", "TQ_TOKEN_FILE": "{empty}"}, "the token file {empty} is empty"),
    (["--url", "http://tq:s3cret@127.0.0.1:1"], {}, "--url http://tq:***@127.0.0.1:1 needs --token-file"),
    ([], {"TQ_URL": "http://s3cret@127.0.0.1:1"}, "--url http://***@127.0.0.1:1 needs --token-file"),
    (["--url", "http://tq:s3cret@127.0.0.1:1", "--token-file", "{token}"], {},
     "the URL http://tq:***@127.0.0.1:1 carries a user or password"),
    (["--url", "http://tq:s3cret@h:port", "--token-file", "{token}"], {}, "not a URL of tq-gateway: 'http://tq:***@h"),
    (["--url", "ftp://tq:s3cret@h", "--token-file", "{token}"], {}, "not a URL of tq-gateway: 'ftp://tq:***@h'"),
])
def test_usage_errors_of_the_remote_options_exit_2_in_one_line(suite: Suite, args: list[str], env: dict[str, str],
                                                                message: str) -> None:
    token, empty = suite.dir / "token", suite.dir / "empty"
    token.write_text("t0k3n\n")
    empty.write_text(" \n")
    token.chmod(0o600)
    empty.chmod(0o600)
    fill = {"token": str(token), "empty": str(empty)}
    argv = [a.format(**fill) for a in args]
    extra = {k: v.format(**fill) for k, v in env.items()}
    r = subprocess.run([sys.executable, "-m", "tq.ctl", *argv, "status"], env={**suite.env, **extra},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.startswith("tqctl: " + message.format(**fill)) and r.stderr.count("\n") == 1, r.stderr
    assert "s3cret" not in r.stderr  # a URL's password or token is never echoed


def test_a_token_file_others_may_read_is_warned_of(pair: Pair) -> None:
    pair.token_file.chmod(0o644)
    r = pair.remote("status")
    assert r.returncode == 0, r
    assert r.stderr == (f"tqctl: warning: the token file {pair.token_file} is readable by other users: they may act "
                        f"as its user (chmod o-r {pair.token_file})\n")


def test_config_check_stays_local(pair: Pair) -> None:
    """It reads this machine's files, whatever --url says, and says so (it did quietly: trial C #10)."""
    r = pair.suite.tqctl("--url", "http://127.0.0.1:1", "--token-file", str(pair.token_file), "config", "check")
    assert r.returncode == 0 and r.stdout.startswith("configuration ok"), r
    assert r.stderr == ("tqctl: warning: config check reads this machine's configuration files, not those of the "
                        "tq-host behind http://127.0.0.1:1: run it there\n"), r.stderr


# ---- Client(url=, token=) ----------------------------------------------------------------------------------


@pytest.fixture
def client(pair: Pair) -> Iterator[Client]:
    with Client(url=pair.gw.url, token=pair.gw.token, timeout=30) as c:
        yield c


def test_client_submit_wait_get(client: Client) -> None:
    jid = client.submit("echo", "one")
    assert client.wait(jid, timeout=10)["state"] == "done"
    assert client.get(jid)["id"] == jid
    job = client.submit_and_wait("echo", "two", wait_timeout=10)
    assert job["state"] == "done" and job["result"]
    jobs = client.wait_many([client.submit("echo", str(i)) for i in range(3)], timeout=10)
    assert [j["state"] for j in jobs.values()] == ["done"] * 3
    with pytest.raises(NotFound):
        client.get(999999)


def test_client_waits_longer_than_one_request_in_chunks(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait past the chunk is made of several requests, until the job ends or the caller's timeout."""
    monkeypatch.setattr(remote, "WAIT_CHUNK", 0.3)
    jid = client.submit("echo", "soon", delay=1.0)
    assert client.wait(jid, timeout=10)["state"] == "done"
    later = client.submit("echo", "later", delay=3600)
    with pytest.raises(JobTimeout, match=f"job {later} did not finish in time") as one:
        client.wait(later, timeout=0.8)
    assert one.value.pending == [later]
    with pytest.raises(JobTimeout) as raised:
        client.wait_many([jid, later], timeout=0.8)
    assert raised.value.pending == [later] and list(raised.value.finished) == [jid]
    assert client.submit_and_wait("echo", "chunked", delay=0.5, wait_timeout=10)["state"] == "done"
    with pytest.raises(JobTimeout):
        client.submit_and_wait("echo", "never", delay=3600, wait_timeout=0.8)


def test_client_subscribe_gives_json_lines_and_a_descriptor_to_select_on(client: Client) -> None:
    with client.another() as feed:
        stream = feed.subscribe(task="echo")
        jid = client.submit("echo", "followed")
        events: list[dict[str, object]] = []
        while not any(e.get("event") == "done" for e in events):
            assert select.select([feed.fileno()], [], [], 15)[0], events
            events += [json.loads(line) for line in next(stream).splitlines()]
        # ("started" only when the echo ran past 5 ms: a loaded machine)
        assert [e["event"] for e in events if e["event"] != "started"] == ["submitted", "assigned", "done"], events
        assert {e["job"] for e in events} == {jid}


def test_client_of_an_absent_gateway_raises_host_unreachable(pair: Pair) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(url=f"http://127.0.0.1:{port}", token="t") as c, pytest.raises(HostUnreachable, match=str(port)):
        c.status()


def test_act_as_is_not_offered_remotely(client: Client) -> None:
    with pytest.raises(Refused, match="act_as"):
        client.call("act_as", token="x")


def test_completion_asks_the_gateway_of_the_line_for_task_names(pair: Pair) -> None:
    pair.local("submit", "remote.only", "--delay", "1h")
    line = f"tqctl --url {pair.gw.url} --token-file {pair.token_file} submit remote.o"
    r = subprocess.run([sys.executable, "-m", "tq.ctl", "_complete", "--", line], env=pair.suite.env,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "remote.only\n", "")


# ---- tokens: who the remote caller is ------------------------------------------------------------------------


def test_token_list_create_and_revoke(pair: Pair) -> None:
    pair.same("token", "list", norm=numbers)
    pair.same("token", "list", "--json", norm=numbers)
    made = pair.remote("token", "create", "made.remotely", "--user", "root", "--read-only")
    assert made.returncode == 0 and made.stdout.startswith("tq_"), made
    assert "made.remotely" in pair.local("token", "list").stdout
    pair.same("token", "revoke", "nosuch")  # exit 5
    assert pair.remote("token", "revoke", "made.remotely").stdout == "revoked token made.remotely\n"


def test_list_after_pages_down_both_ways(pair: Pair) -> None:
    ids = [job_of(pair.local("submit", "echo", str(i), "--delay", "1h")) for i in range(4)]
    pair.same("list", "--limit", "2", "--after", str(ids[-1]))
    pair.same("list", "--after", str(ids[0]))
    pair.same("list", "--after", "0")  # exit 2


def token_file_for(pair: Pair, user: str, read_only: bool = False) -> str:
    path = pair.suite.dir / f"token.{user}.{read_only}"
    path.write_text(pair.suite.token(user, read_only) + "\n")
    path.chmod(0o600)
    return str(path)


def as_token(pair: Pair, token_file: str, *args: str) -> Run:
    return pair.suite.tqctl("--url", pair.gw.url, "--token-file", token_file, *args)


def test_a_bad_or_revoked_token_exits_4(member: pwd.struct_passwd, pair: Pair) -> None:
    bad = pair.suite.dir / "bad"
    bad.write_text("tq_" + "A" * 43)
    bad.chmod(0o600)
    r = as_token(pair, str(bad), "status")
    assert r.returncode == 4 and r.stdout == "" and r.stderr.count("\n") == 1, r
    assert "token" in r.stderr
    token_file = token_file_for(pair, member.pw_name)
    assert as_token(pair, token_file, "list").returncode == 0
    (name,) = [t["name"] for t in json.loads(pair.local("token", "list", "--json").stdout)
               if t["user"] == member.pw_name]
    assert pair.local("token", "revoke", name).returncode == 0
    r = as_token(pair, token_file, "list")
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r


def test_the_access_rules_apply_to_the_tokens_user_exit_4(member: pwd.struct_passwd, pair: Pair) -> None:
    """A token acts as its user: a member of group tq may not pause, nor cancel root's job; a read-only token may
    not submit. The refusal is tq-host's, word for word as a local client acting with the token gets it."""
    token_file = token_file_for(pair, member.pw_name)
    jid = job_of(pair.local("submit", "echo", "root's", "--delay", "1h"))
    with Client(config=str(pair.suite.config)) as as_member:
        as_member.act_as(Path(token_file).read_text().strip())
        for args, call in ((["pause", "default"], lambda: as_member.pause("default")),
                           (["cancel", str(jid)], lambda: as_member.cancel(jid))):
            with pytest.raises(PermissionDenied) as refused:
                call()
            r = as_token(pair, token_file, *args)
            assert (r.returncode, r.stdout, r.stderr) == (4, "", f"tqctl: {refused.value}\n"), r
    viewer = token_file_for(pair, member.pw_name, read_only=True)
    r = as_token(pair, viewer, "submit", "echo", "x")
    assert r.returncode == 4 and "read-only" in r.stderr, r
    assert as_token(pair, viewer, "show", str(jid)).returncode == 0


def test_https_with_the_gateways_ca(suite: Suite) -> None:
    cert, key = suite.dir / "cert.pem", suite.dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    gw, token_file = https_gateway(suite, cert, key)
    url = gw.url.replace("http:", "https:")
    base = ["--url", url, "--token-file", str(token_file)]
    r = suite.tqctl(*base, "--ca-file", str(cert), "submit", "--wait", "echo", "over", "tls")
    assert (r.returncode, r.stdout) == (0, suite.tqctl("result", str(suite.client().list_jobs()[0]["id"])).stdout), r
    r = suite.tqctl(*base, "status")  # the system's CAs do not know this one
    assert r.returncode == 3 and f"tq-gateway is not reachable at {url}: its certificate is not trusted" in r.stderr
    assert "--ca-file" in r.stderr and r.stderr.count("\n") == 1
    with Client(url=url, token=gw.token, ca_file=str(cert)) as c:
        jid = c.submit("echo", "python")
        assert c.wait(jid, timeout=10)["state"] == "done"
        with c.another() as feed:
            stream = feed.subscribe(job=jid, recent=10)
            names = [json.loads(line)["event"] for line in next(stream).splitlines()]
            assert [n for n in names if n != "started"] == ["submitted", "assigned", "done"], names


def test_https_to_a_name_the_certificate_does_not_name_says_so(suite: Suite) -> None:
    """The CA is given and trusted, but the URL's host is not one the certificate names: the message says that
    (not to give the CA, which was given); a CA that is not the one that signed it still gets the --ca-file hint."""
    ca = tlsfiles.authority(suite.dir, "tq-ca")
    served = tlsfiles.issue(ca, suite.dir, "gateway.example", ("127.0.0.1",))
    gw, token_file = https_gateway(suite, served.cert, served.key)
    port = gw.url.rpartition(":")[2]
    ok = suite.tqctl("--url", f"https://127.0.0.1:{port}", "--token-file", str(token_file), "--ca-file",
                     str(ca.cert), "status")
    assert ok.returncode == 0, ok
    url = f"https://localhost:{port}"
    r = suite.tqctl("--url", url, "--token-file", str(token_file), "--ca-file", str(ca.cert), "status")
    assert (r.returncode, r.stdout) == (3, ""), r
    assert r.stderr.startswith(f"tqctl: tq-gateway is not reachable at {url}: its certificate does not name "
                               "localhost (") and r.stderr.count("\n") == 1, r
    assert r.stderr.endswith("use in the URL a name or address the certificate names, or give tq-gateway a "
                             "certificate that names localhost\n") and "--ca-file" not in r.stderr, r
    other = tlsfiles.authority(suite.dir, "other-ca")
    r = suite.tqctl("--url", url, "--token-file", str(token_file), "--ca-file", str(other.cert), "status")
    assert r.returncode == 3 and "its certificate is not trusted" in r.stderr and "--ca-file FILE" in r.stderr, r


def test_a_url_with_a_wrong_path_is_a_usage_error_not_a_missing_job(pair: Pair) -> None:
    url = pair.gw.url + "/tq"
    r = pair.suite.tqctl("--url", url, "--token-file", str(pair.token_file), "show", "1")
    assert (r.returncode, r.stderr) == (2, f"tqctl: tq-gateway at {url} has no /tq/api/v1/jobs/1: is the URL right?\n")


def test_waits_follow_a_gateway_whose_max_wait_is_short(suite: Suite) -> None:
    """A wait past the gateway's max_wait is refused (400); the client then waits in chunks of that length."""
    suite.write_config('[gateway]\nmax_wait = "1s"\n')
    suite.start(workers=1)
    gw = suite.gateway()
    with Client(url=gw.url, token=gw.token, timeout=30) as c:
        jid = c.submit("echo", "slow", delay=2.5)
        assert c.wait(jid, timeout=10)["state"] == "done"
        assert c.submit_and_wait("echo", "later", delay=1.5, wait_timeout=5)["state"] == "done"
        assert [j["state"] for j in c.wait_many([c.submit("echo", "x", delay=1.5)], timeout=10).values()] == ["done"]


def test_events_follow_says_so_when_the_gateway_goes(pair: Pair, followers: list[Follower]) -> None:
    """The stream's end is the host's going for follow.py: one line on stderr, and it follows again once it can."""
    pair.local("submit", "--wait", "echo", "seen")
    follower = Follower(pair, "events", "--follow", "-n", "1", remote=True)
    followers.append(follower)
    assert " done " in follower.lines(1)[0]  # (it follows)
    pair.gw.daemon.proc.kill()
    said = follower.said()
    assert said.startswith(f"tqctl: lost tq-gateway at {pair.gw.url}: ") and said.endswith(
        "; following again once it is back\n") and said.count("\n") == 1, said
    assert follower.proc.poll() is None


def test_a_kept_alive_connection_the_gateway_closed_is_made_again(suite: Suite) -> None:
    """The gateway closes an idle connection after request_timeout; the next request (a submit too, which is
    never sent twice) goes on a new one."""
    suite.write_config('[gateway]\nrequest_timeout = "0.5s"\n')
    suite.start(workers=1)
    gw = suite.gateway()
    with Client(url=gw.url, token=gw.token, timeout=30) as c:

        def closed_by_the_gateway() -> None:
            assert c.remote is not None
            idle = c.remote._http
            assert idle is not None and idle.sock is not None
            wait_until(lambda: remote._closed_by_peer(idle), what="the gateway closing the idle connection")

        jid = c.submit("echo", "first")
        closed_by_the_gateway()
        assert c.submit("echo", "second") == jid + 1
        closed_by_the_gateway()
        assert c.get(jid)["id"] == jid


class NotAGateway:
    """An HTTP server that is not tq-gateway (a proxy's error page, another site), aiohttp on a thread of its own:
    every request is answered `status` with an HTML body."""

    def __init__(self, status: int) -> None:
        import asyncio
        import threading

        from aiohttp import web

        async def page(_: web.Request) -> web.Response:
            return web.Response(status=status, text="<html><body>nope</body></html>", content_type="text/html")

        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", page)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.loop.run_until_complete(web.SockSite(self.runner, self.sock).start())
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


@pytest.mark.parametrize(("status", "exit_status", "message"), [
    (502, 3, "tq-gateway at {url} answered 502 Bad Gateway"),
    (401, 4, "tq-gateway at {url} answered 401 Unauthorized"),
    (200, 3, "{url} did not answer as tq-gateway does (200, text/html; charset=utf-8): is it tq-gateway's URL?"),
])
def test_an_answer_that_is_not_the_gateways_is_one_line(suite: Suite, status: int, exit_status: int,
                                                        message: str) -> None:
    server = NotAGateway(status)
    try:
        token = suite.dir / "token"
        token.write_text("t")
        token.chmod(0o600)
        r = suite.tqctl("--url", server.url, "--token-file", str(token), "status")
        assert (r.returncode, r.stdout, r.stderr) == (exit_status, "", f"tqctl: {message.format(url=server.url)}\n")
    finally:
        server.close()


def test_events_follow_ends_when_its_token_is_revoked(pair: Pair, followers: list[Follower]) -> None:
    token = pair.suite.token(name="follows")
    pair.token_file.write_text(f"{token}\n")
    pair.local("submit", "--wait", "echo", "seen")
    followers.append(Follower(pair, "events", "--follow", "-n", "1", remote=True))
    assert "done" in followers[0].lines(1)[0]
    pair.local("token", "revoke", "follows")
    pair.local("submit", "echo", "unseen")
    out, err = followers[0].proc.communicate(timeout=20)
    assert followers[0].proc.returncode == 4, (out, err)
    assert b"revoked" in err and b"unseen" not in followers[0].data + out, (out, err)


def https_gateway(suite: Suite, cert: Path, key: Path) -> tuple[Gateway, Path]:
    """tq-host, a worker and tq-gateway serving HTTPS with `cert` and `key`, and a file holding a token for it."""
    suite.write_config(f'[gateway]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    suite.start(workers=1)
    gw = suite.gateway()
    token_file = suite.dir / "token"
    token_file.write_text(f"{gw.token}\n")
    token_file.chmod(0o600)
    return gw, token_file


def test_http_to_a_gateway_that_serves_https_says_the_url_may_need_https(suite: Suite) -> None:
    ca = tlsfiles.authority(suite.dir, "tq-ca")
    served = tlsfiles.issue(ca, suite.dir, "localhost", ("127.0.0.1",))
    gw, token_file = https_gateway(suite, served.cert, served.key)
    r = suite.tqctl("--url", gw.url, "--token-file", str(token_file), "status")  # (gw.url says http://)
    assert r.returncode == 3 and "(if it serves HTTPS, the URL must say https://)" in r.stderr, r
    assert r.stderr.count("\n") == 1
