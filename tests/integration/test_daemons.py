"""Daemon behaviour: sd_notify, signals, reload, restarts, access and configuration errors."""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Suite
from tq.client import Client, HostUnreachable

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs tqctl as user nobody: setpriv)")


def test_host_notifies_ready_status_watchdog_and_stopping(suite: Suite) -> None:
    host = suite.host(env={"WATCHDOG_USEC": "200000"})
    host.notify.wait_for(lambda m: m.startswith("STATUS=") and "queued" in m)
    first = host.notify.wait_for(lambda m: m == "WATCHDOG=1")
    assert first
    n = host.notify.messages.count("WATCHDOG=1")
    host.notify.wait_for(lambda m: m == "WATCHDOG=1", start=len(host.notify.messages))  # pings go on while idle
    assert host.notify.messages.count("WATCHDOG=1") > n
    host.signal(signal.SIGTERM)
    assert host.wait() == 0
    host.notify.wait_for(lambda m: m == "STOPPING=1")
    assert "tq-host stopping; no worker is live" in host.text()  # (make run stops its workers first)


def test_a_stopping_host_says_how_many_live_workers_carry_on(suite: Suite) -> None:
    host, _workers = suite.start(workers=2)
    host.signal(signal.SIGTERM)
    assert host.wait() == 0
    assert "tq-host stopping; 2 live worker(s) carry on and reconnect when it is back" in host.text()


def test_worker_notifies_status_and_pings_the_watchdog_during_a_long_job(suite: Suite) -> None:
    suite.write_config('\n[tasks.slow]\ncommand = ["sleep", "1"]\n')
    suite.host()
    w = suite.worker("1", env={"WATCHDOG_USEC": "200000"})
    suite.wait_live(1)
    jid = suite.client().submit("slow")
    mark = w.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))
    start = w.notify.messages.index(mark)
    for _ in range(3):  # at least three pings while the job runs
        w.notify.wait_for(lambda m: m == "WATCHDOG=1", start=start + 1)
        start = len(w.notify.messages) - 1
    assert suite.client().wait(jid, timeout=10)["state"] == "done"
    w.notify.wait_for(lambda m: m == "STATUS=idle")


def test_reload_with_a_good_config_and_a_bad_one_keeps_the_old(suite: Suite) -> None:
    host, (w1,) = suite.start(workers=1)
    host.signal(signal.SIGHUP)
    host.notify.wait_for(lambda m: m == "RELOADING=1")
    mono = host.notify.wait_for(lambda m: m.startswith("MONOTONIC_USEC="))
    assert int(mono.split("=")[1]) > 0
    i = host.notify.messages.index("RELOADING=1")
    host.notify.wait_for(lambda m: m == "READY=1", start=i)
    good = suite.config.read_text()
    suite.config.write_text(good + "\n[bogus]\nkey = 1\n")
    n = len(host.notify.messages)
    host.signal(signal.SIGHUP)
    host.notify.wait_for(lambda m: m == "READY=1", start=n)
    assert "reload refused, keeping the running configuration" in host.text()
    assert f"{suite.config}: bogus: unknown key" in host.text()
    w1.signal(signal.SIGHUP)
    w1.notify.wait_for(lambda m: m == "RELOADING=1")
    w1.notify.wait_for(lambda m: m == "READY=1", start=w1.notify.messages.index("RELOADING=1"))
    assert w1.proc.poll() is None and "reload refused" in w1.text()
    suite.config.write_text(good)
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")


def test_a_refused_reload_is_in_status_until_a_reload_succeeds(suite: Suite) -> None:
    host, (w1,) = suite.start(workers=1)
    good = suite.config.read_text()
    suite.config.write_text(good + "\n[bogus]\nkey = 1\n")
    refused = f"reload refused: {suite.config}: bogus: unknown key"
    for daemon, idle in ((host, "worker(s) live"), (w1, "idle")):
        n = len(daemon.notify.messages)
        daemon.signal(signal.SIGHUP)
        status = daemon.notify.wait_for(lambda m: m.startswith("STATUS=") and refused in m, start=n)
        assert idle in status and "\n" not in status, status  # one line: the summary, then the refusal
    suite.config.write_text(good)
    for daemon in (host, w1):
        n = len(daemon.notify.messages)
        daemon.signal(signal.SIGHUP)
        daemon.notify.wait_for(lambda m: m == "READY=1", start=n)
        after = [m for m in daemon.notify.messages[n:] if m.startswith("STATUS=")]
        assert after and "reload refused" not in after[-1], after


def test_check_config_exits_2_naming_the_key_or_0_silently_as_a_reload_would_read_it(suite: Suite) -> None:
    good = suite.config.read_text()
    for module, extra in (("tq.host", []), ("tq.worker", ["1"])):
        check = [sys.executable, "-m", module, "--config", str(suite.config), "--check-config", *extra]
        suite.config.write_text(good + "\n[worker.1]\nprefetch = -1\n")
        r = subprocess.run(check, env=suite.env, capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (2, ""), r
        assert f"{suite.config}: worker.1.prefetch" in r.stderr, r.stderr
        suite.config.write_text(good)
        r = subprocess.run(check, env=suite.env, capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    r = subprocess.run([sys.executable, "-m", "tq.worker", "--config", str(suite.config), "--check-config",
                        "{2..4}"], env=suite.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "invalid instance '{2..4}'" in r.stderr, r


def sigterm_mid_job(suite: Suite, task: str) -> tuple[Client, int]:
    """Start one worker on a slow task, SIGTERM it while the job runs, and see it exit 0."""
    suite.write_config(task)
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("slow")
    w1.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))
    w1.signal(signal.SIGTERM)
    assert w1.wait() == 0
    w1.notify.wait_for(lambda m: m == "STOPPING=1")
    return c, jid


def test_sigterm_lets_the_running_job_finish_then_exits_zero(suite: Suite) -> None:
    c, jid = sigterm_mid_job(suite, '\n[tasks.slow]\ncommand = ["sh", "-c", "sleep 1.5; echo finished"]\n')
    job = c.wait(jid, timeout=10)
    assert (job["state"], job["result"], job["attempts"]) == ("done", "finished", 1)
    assert [w["state"] for w in c.workers()] == ["stopped"]


def test_sigterm_hands_back_a_job_that_outlives_stop_timeout(suite: Suite) -> None:
    c, jid = sigterm_mid_job(suite, '\n[tasks.slow]\ncommand = ["sleep", "30"]\n[worker.1]\nstop_timeout = "200ms"\n')
    job = c.get(jid)
    assert (job["state"], job["attempts"]) == ("queued", 0)  # handed back, not counted as a failure


def test_host_restart_does_not_disturb_workers(suite: Suite) -> None:
    host, (w1,) = suite.start(workers=1)
    assert suite.client().wait(suite.client().submit("task-1"), timeout=10)["state"] == "done"
    host.signal(signal.SIGTERM)
    assert host.wait() == 0
    suite.host()
    r = suite.tqctl("submit", "--wait", "task-1", "again")
    assert (r.returncode, r.stdout) == (0, "task-1 again processed\n")
    assert w1.proc.poll() is None  # the same worker process carried on


def test_a_worker_says_in_status_and_once_in_its_log_when_tq_host_is_gone_and_back(suite: Suite) -> None:
    host, (w1,) = suite.start(workers=1)
    w1.notify.wait_for(lambda m: m == "STATUS=idle")
    for stop in (signal.SIGTERM, signal.SIGKILL):
        n = len(w1.notify.messages)
        gone = host.pid
        host.signal(stop)
        host.wait()
        w1.notify.wait_for(lambda m, pid=gone: m == f"STATUS=waiting for tq-host: tq-host (pid {pid}) exited",
                           start=n)
        host = suite.host()
        w1.notify.wait_for(lambda m: m == "STATUS=idle", start=n + 1)
        assert w1.text().count(f"tq-host (pid {gone}) exited; waiting for it") == 1, w1.text()
        assert w1.text().count(f"found tq-host again (pid {host.pid})") == 1, w1.text()
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")
    host.signal(signal.SIGTERM)
    host.wait()
    w2 = suite.worker("2")  # started while tq-host is down (its mailbox is there): says so from the start
    w2.notify.wait_for(lambda m: m == "STATUS=waiting for tq-host: tq-host is not running")
    suite.host()
    w2.notify.wait_for(lambda m: m == "STATUS=idle")
    suite.wait_live(2)


def test_jobs_submitted_while_no_host_runs_wait_for_it(suite: Suite) -> None:
    host, _workers = suite.start(workers=1)
    host.signal(signal.SIGKILL)
    host.wait()
    r = suite.tqctl("submit", "task-1")
    assert r.returncode == 3 and "not reachable" in r.stderr
    suite.host()
    r = suite.tqctl("submit", "--wait", "task-1")
    assert (r.returncode, r.stdout) == (0, "task-1 processed\n")


@needs_root
def test_a_user_outside_the_group_is_refused_with_exit_4(suite: Suite) -> None:
    suite.start(workers=1)
    r = suite.tqctl("status", user="nobody")
    assert r.returncode == 4, r.stderr
    sock = os.stat(suite.dir / "tq.sock")
    assert sock.st_mode & 0o777 == 0o660
    group = grp.getgrgid(sock.st_gid).gr_name  # tq where group tq exists (restrict): only then is it suggested
    hint = ("add yourself to group tq (sudo adduser $USER tq, then log in again)" if group == "tq" else
            f"it belongs to user root (uid 0) and group {group} (mode 0660): run tqctl as that user or a member of "
            "that group")
    assert r.stderr == f"tqctl: permission denied on {suite.dir / 'tq.sock'}: {hint}\n"


def test_bad_config_refuses_to_start_naming_file_and_key(suite: Suite) -> None:
    suite.config.write_text('[host]\ndurability = "sometimes"\n')
    for module, extra in (("tq.host", []), ("tq.worker", ["1"])):
        r = subprocess.run([sys.executable, "-m", module, "--config", str(suite.config), *extra],
                           env=suite.env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2
        assert f"{suite.config}: host.durability: must be one of full, normal" in r.stderr
    r = suite.tqctl("config", "check")
    assert r.returncode == 2 and "host.durability" in r.stderr
    suite.config.write_text("[host\n")
    r = suite.tqctl("config", "check")
    assert r.returncode == 2 and "TOML syntax error: line 1" in r.stderr


def test_queue_limits_over_the_kernel_start_with_what_it_grants_and_say_so(suite: Suite) -> None:
    """docs/reliability.md: past fs.mqueue.msg_max tq-host starts with what the kernel grants and says so once
    (as root or not: it does not lean on root's CAP_SYS_RESOURCE), and tqctl status shows it."""
    limit = int(Path("/proc/sys/fs/mqueue/msg_max").read_text())
    suite.write_config("", max_messages=limit + 1)
    host = suite.host()
    said = f"mqueue.max_messages = {limit + 1} exceeds fs.mqueue.msg_max = {limit}: using {limit}"
    assert host.text().count(said) == 1, host.text()
    r = suite.tqctl("status")
    assert r.returncode == 0 and said in r.stdout, r


def test_a_second_host_on_the_same_state_dir_refuses(suite: Suite) -> None:
    suite.host()
    second = suite.host(ready=False)
    assert second.wait() == 1
    assert "another tq-host is running" in second.text()


def test_host_restart_requeues_jobs_of_a_worker_that_never_came_back(suite: Suite) -> None:
    # The first attempt hangs; the second finishes. A lost attempt counts: one retry is what it needs.
    suite.write_config('\n[tasks.slow]\ncommand = ["sh", "-c", "[ \\"$TQ_ATTEMPT\\" = 1 ] && exec sleep 30; echo ok"]\n'
                       'retries = 1\nbackoff = "0s"\n', lease="1s", heartbeat="100ms")
    host, (w1,) = suite.start(workers=1)
    c = suite.client()
    jid = c.submit("slow")
    w1.notify.wait_for(lambda m: m.startswith(f"STATUS=running job {jid}"))
    for d in (host, w1):
        d.signal(signal.SIGKILL)
        d.wait()
    suite.host()
    suite.worker("2")
    job = suite.client().wait(jid, timeout=20)
    assert (job["state"], job["worker"], job["attempts"], job["result"]) == ("done", "2", 2, "ok")


def test_a_client_reconnects_after_the_host_comes_back(suite: Suite) -> None:
    host, _ = suite.start(workers=1)
    c = suite.client()
    assert c.wait(c.submit("task-1"), timeout=10)["state"] == "done"
    host.signal(signal.SIGKILL)
    host.wait()
    with pytest.raises(HostUnreachable):
        c.submit("task-1")
    with pytest.raises(HostUnreachable):
        c.submit("task-1")
    suite.host()
    assert c.wait(c.submit("task-1", "again"), timeout=10)["result"] == "task-1 again processed"


def test_a_client_times_out_on_a_stopped_host_then_carries_on(suite: Suite) -> None:
    host = suite.host()
    c = Client(config=str(suite.config), timeout=0.3)
    assert c.status()["version"]
    host.signal(signal.SIGSTOP)
    try:
        with pytest.raises(HostUnreachable, match=r"did not answer within the client's timeout \(0.3s\)"):
            c.status()
    finally:
        host.signal(signal.SIGCONT)
    assert c.status()["version"]  # a new connection: the late answer on the old one is not mistaken for this
    c.close()
