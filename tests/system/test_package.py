"""SPEC section 1 on a real systemd: the built .deb installed with apt in a clean bookworm.

The tests share one container and run in file order, each leaving tq running.
The package comes from TQ_DEB or the newest dist/tq_*.deb (`make deb`).
"""

from __future__ import annotations

import collections
import json
import re
import shlex
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from nspawn import Container, install_package
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.system
TEST_CONFIG = """\
# Added by tests/system: a task that takes as long as its argument says.
[tasks.slow]
command = ["/bin/sleep"]
timeout = "120s"
"""
WORKERS = ("tq-worker@1", "tq-worker@2", "tq-worker@3", "tq-worker@4")
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job(box: Container, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(box.run(["tqctl", "show", str(job_id), "--json"]).stdout)
    return found


def submit(box: Container, *argv: str) -> int:
    return int(box.run(["tqctl", "submit", *argv]).stdout)


def unit_property(box: Container, unit: str, name: str) -> str:
    return box.run(["systemctl", "show", "-p", name, "--value", unit]).stdout.strip()


def wait_done(box: Container, job_id: int, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = job(box, job_id)
        return found if found["state"] == "done" else None

    return wait_until(done, timeout, f"job {job_id} done") or {}


def running_worker(box: Container, job_id: int) -> str:
    def worker() -> str | None:
        found = job(box, job_id)
        return str(found["worker"]) if found["state"] == "running" and found["worker"] else None

    return f"tq-worker@{wait_until(worker, 30, f'job {job_id} running')}"


@pytest.fixture(scope="module")
def tq(container: Container) -> Container:
    try:
        return install_package(container)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def test_install_creates_user_applies_sysctl_and_starts_host_and_worker_1(tq: Container) -> None:
    assert tq.run("getent group tq").stdout.startswith("tq:")
    assert tq.run("cat /proc/sys/fs/mqueue/msg_max").stdout.strip() == "256"
    assert tq.installed is not None and "could not raise" not in tq.installed.stdout + tq.installed.stderr
    assert tq.run("systemctl is-active tq.target tq-host tq-worker@1").stdout.split() == ["active"] * 3
    assert tq.run("systemctl is-enabled tq.target tq-host tq-worker@1").stdout.split() == ["enabled"] * 3
    assert tq.run("dpkg-query -W -f '${Conffiles}' tq").stdout.split()[0] == "/etc/tq/tq.toml"


def test_the_private_venv_is_byte_compiled_at_install(tq: Container) -> None:
    """The daemons' user cannot write __pycache__: without postinst's py3compile, tq-host and every tqctl would
    compile tq from source each time they start."""
    site = tq.run("ls -d /usr/lib/tq/lib/python3*/site-packages").stdout.strip()
    for module in ("ctl/__init__", "client", "host/__init__", "worker/__init__", "transport/posix"):
        directory, _, name = f"tq/{module}".rpartition("/")
        assert tq.run(f"ls {site}/{directory}/__pycache__/{name}.cpython-3*.pyc", check=False).returncode == 0, module


def test_installed_units_verify_clean(tq: Container) -> None:
    # --man=no: the rootfs has no man-db for verify to run; the next test finds the pages instead
    result = tq.run("systemd-analyze verify --man=no tq-host.service tq-worker@1.service tq.target")
    assert result.stdout == "" and result.stderr == ""


def test_the_units_documentation_is_man_pages_the_package_installs(tq: Container) -> None:
    for unit in ("tq-host.service", "tq-worker@1.service", "tq.target"):
        pages = [re.fullmatch(r"man:([a-z.-]+)\(([1-8])\)", uri) for uri in  # systemctl quotes each URI
                 shlex.split(unit_property(tq, unit, "Documentation"))]
        assert pages and all(pages), unit
        for name, section in (page.groups() for page in pages if page):
            tq.run(["test", "-s", f"/usr/share/man/man{section}/{name}.{section}.gz"])


def bash_completion(box: Container, line: str) -> list[str]:
    """What the installed completion offers after `line`, its function called as bash's completion calls it."""
    script = ("source /usr/share/bash-completion/completions/tqctl\n"
              f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
              'read -ra COMP_WORDS <<<"$COMP_LINE"; [[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
              "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
              '_tqctl tqctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = box.run(["bash", "--norc", "-c", script])
    assert result.stderr == ""
    return [word for word in result.stdout.split("\n") if word]


def test_bash_completion_offers_commands_options_and_a_queue_of_the_running_host(tq: Container) -> None:
    job_id = submit(tq, "--queue", "completion-test", "--delay", "1h", "task-1")  # a queue only the host knows
    try:
        assert {"submit", "status", "queues", "workers"} <= set(bash_completion(tq, "tqctl "))
        assert bash_completion(tq, "tqctl submit --wai") == ["--wait", "--wait-timeout"]
        assert bash_completion(tq, "tqctl submit --queue comp") == ["completion-test"]
    finally:
        tq.run(["tqctl", "cancel", str(job_id)])


def test_metrics_timer_is_off_until_enabled_then_writes_the_textfile_every_15s(tq: Container) -> None:
    path = "/var/lib/prometheus/node-exporter/tq.prom"
    assert tq.run("systemctl is-enabled tq-metrics.timer", check=False).stdout.strip() == "disabled"
    tq.run("install -d -m 0755 /var/lib/prometheus/node-exporter")  # as Debian's prometheus-node-exporter has it
    tq.run("systemctl enable --now tq-metrics.timer")
    try:
        first = wait_until(lambda: tq.run(["stat", "-c", "%i %U %a", path], check=False).stdout.split(), 30,
                           "the metrics textfile")
        assert first[1:] == ["root", "644"]
        families = {f.name: f for f in text_string_to_metric_families(tq.run(["cat", path]).stdout)}
        assert families["tq_up"].samples[0].value == 1
        assert {"tq_jobs", "tq_jobs_finished", "tq_job_duration_seconds", "tq_workers"} <= set(families)
        assert unit_property(tq, "tq-metrics.service", "Result") == "success"
        # 15 s later the timer writes it again: a new file renamed over the old one, nothing else left there
        wait_until(lambda: tq.run(["stat", "-c", "%i", path]).stdout.strip() != first[0], 40, "the next write")
        assert tq.run("ls -A /var/lib/prometheus/node-exporter").stdout.split() == ["tq.prom"]
    finally:
        tq.run("systemctl disable --now tq-metrics.timer")


def test_submit_prints_the_id_and_wait_prints_the_result(tq: Container) -> None:
    assert tq.run("tqctl submit task-1").stdout.strip().isdigit()
    assert tq.run("tqctl submit --wait task-1").stdout == "task-1 processed\n"


def test_four_workers_start_and_persist_when_enabled(tq: Container) -> None:
    tq.put_text(TEST_CONFIG, "/etc/tq/tq.d/50-system-test.toml")
    tq.run(["systemctl", "enable", "--now", *WORKERS])
    tq.run("systemctl reload tq-host 'tq-worker@*'")
    assert tq.run(["systemctl", "is-active", *WORKERS]).stdout.split() == ["active"] * 4
    workers = json.loads(tq.run("tqctl workers --json").stdout)
    assert len(workers) == 4, workers


def test_journal_shows_a_job_from_host_and_worker(tq: Container) -> None:
    job_id = submit(tq, "task-1")
    wait_done(tq, job_id)
    lines = tq.run(["journalctl", f"TQ_JOB_ID={job_id}", "-o", "json", "--no-pager"]).stdout.splitlines()
    units = {json.loads(line)["_SYSTEMD_UNIT"] for line in lines}
    assert "tq-host.service" in units and any(u.startswith("tq-worker@") for u in units), units


DRAIN_SCRIPT = """
import json, sys, threading, time
from tq.client import Client
jobs, clients = int(sys.argv[1]), int(sys.argv[2])
per = jobs // clients
conns = [Client() for _ in range(clients)]
base = conns[0].status()["states"]["done"]
start = time.monotonic()
def submit(c):
    for i in range(0, per, 100):
        c.submit_many([("task-1", [str(j)]) for j in range(i, min(i + 100, per))])
threads = [threading.Thread(target=submit, args=(c,)) for c in conns]
for t in threads: t.start()
for t in threads: t.join()
while conns[0].status()["states"]["done"] < base + per * clients:
    time.sleep(0.005)
print(json.dumps({"jobs": per * clients, "jobs_per_s": round(per * clients / (time.monotonic() - start))}))
"""
SUMMARY = re.compile(r"^(\d+) routine job events not logged")
EVENT = re.compile(r"^job \d+ (\w+)")


def cursor(box: Container) -> str:
    out = box.run("journalctl -n 0 --show-cursor --no-pager").stdout
    return out.strip().rsplit("-- cursor: ", 1)[1]


def job_event_accounting(box: Container, after: str, unit: str) -> tuple[collections.Counter[str], int]:
    """Job event lines journald stored since `after` from units named `unit`*, by event, and the events summarised.

    The units are filtered here, not with -u: journalctl --after-cursor -u skips the first match when the
    cursor's own entry is not one.
    """
    box.run("journalctl --sync")
    out = box.run(["journalctl", "--after-cursor", after, "-o", "json", "--output-fields=_SYSTEMD_UNIT,MESSAGE",
                   "--no-pager"]).stdout
    events: collections.Counter[str] = collections.Counter()
    summarised = 0
    for entry in map(json.loads, out.splitlines()):
        if not str(entry.get("_SYSTEMD_UNIT", "")).startswith(unit) or not isinstance(entry["MESSAGE"], str):
            continue
        if m := EVENT.match(entry["MESSAGE"]):
            events[m.group(1)] += 1
        elif m := SUMMARY.match(entry["MESSAGE"]):
            summarised += int(m.group(1))
    return events, summarised


def drain(box: Container, jobs: int) -> tuple[int, str]:
    """Drain `jobs` echo jobs from 4 clients inside the container; the rate and the journal cursor before."""
    before = cursor(box)
    out = box.run(["/usr/lib/tq/bin/python", "-c", DRAIN_SCRIPT, str(jobs), "4"], timeout=300).stdout
    return int(json.loads(out)["jobs_per_s"]), before


def test_drain_under_journald_with_default_logging_loses_no_log_line(
        tq: Container, report: Callable[[str], None]) -> None:
    """Every job event is either a line in the journal or counted in a summary line: journald dropped none.

    The host logs submitted, assigned and done (3 per job), each worker started and done (2 per job).
    """
    jobs = 20000
    rate, before = drain(tq, jobs)
    report(f"system drain: {jobs} echo jobs, 4 clients, 4 workers, journald in the path, default logging: "
           f"{rate} jobs/s")

    def accounted() -> bool:
        host, host_summarised = job_event_accounting(tq, before, "tq-host")
        workers, workers_summarised = job_event_accounting(tq, before, "tq-worker@")
        return (host.total() + host_summarised, workers.total() + workers_summarised) == (3 * jobs, 2 * jobs)

    try:
        wait_until(accounted, 15, "every job event logged or summarised")
    except AssertionError:
        host = job_event_accounting(tq, before, "tq-host")
        workers = job_event_accounting(tq, before, "tq-worker@")
        raise AssertionError(f"journald lost job events: host {host}, expected {3 * jobs}; "
                             f"workers {workers}, expected {2 * jobs}") from None
    events, summarised = job_event_accounting(tq, before, "tq-host")
    assert summarised > 0 and events["submitted"] > 0, (events, summarised)  # the budget was in effect


def test_worker_killed_mid_job_is_restarted_and_the_job_completes(tq: Container) -> None:
    job_id = submit(tq, "slow", "3")
    worker = running_worker(tq, job_id)
    restarts = int(unit_property(tq, worker, "NRestarts"))
    tq.run(["systemctl", "kill", "-s", "KILL", worker])
    wait_until(lambda: int(unit_property(tq, worker, "NRestarts")) > restarts, 30, f"{worker} restarted")
    assert wait_done(tq, job_id)["attempts"] >= 2


def test_stopped_worker_is_killed_by_the_watchdog_and_the_job_completes(tq: Container) -> None:
    job_id = submit(tq, "slow", "3")
    worker = running_worker(tq, job_id)
    def timeouts() -> int:
        return tq.run(["journalctl", "-u", worker, "-o", "cat", "--no-pager"]).stdout.count("Watchdog timeout")

    before = timeouts()
    tq.run(["systemctl", "kill", "-s", "STOP", "--kill-whom=main", worker])
    wait_until(lambda: timeouts() > before, 60, f"{worker} killed by the watchdog")
    wait_done(tq, job_id, timeout=60)
    wait_until(lambda: unit_property(tq, worker, "ActiveState") == "active", 30, f"{worker} back")


def test_host_restart_with_100_jobs_in_flight_completes_each_exactly_once(tq: Container) -> None:
    script = ("from tq.client import Client; "
              "print(*Client().submit_many([('slow', ['0.05'])] * 100))")
    ids = [int(i) for i in tq.run(["/usr/lib/tq/bin/python", "-c", script]).stdout.split()]
    time.sleep(0.5)
    tq.run("systemctl restart tq-host")
    for job_id in ids:
        wait_done(tq, job_id, timeout=120)
    host_log = tq.run("journalctl -u tq-host -o cat --no-pager").stdout.splitlines()
    for job_id in ids:
        done = [line for line in host_log if line.startswith(f"job {job_id} done")]
        assert len(done) == 1, (job_id, done)


def test_user_outside_group_tq_is_refused_with_exit_4(tq: Container) -> None:
    tq.run("id outsider || useradd --no-create-home outsider")
    result = tq.run(["tqctl", "submit", "task-1"], user="outsider", check=False)
    assert result.returncode == 4, result
    assert "permission denied" in result.stderr and "add yourself to group tq" in result.stderr


def test_member_of_group_tq_can_submit(tq: Container) -> None:
    tq.run("id insider || useradd --no-create-home --groups tq insider")
    assert tq.run(["tqctl", "submit", "--wait", "task-1"], user="insider").stdout == "task-1 processed\n"


def reload_and_wait(box: Container, units: str) -> None:
    box.run(f"systemctl reload {units}")  # returns once READY=1 follows RELOADING=1


def test_a_job_that_kills_its_worker_every_time_ends_dead_and_no_worker_unit_fails(tq: Container) -> None:
    tq.put_text('[tasks.poison]\ncommand = ["sh", "-c", "kill -9 $PPID; sleep 5"]\nretries = 3\n',
                "/etc/tq/tq.d/70-poison.toml")
    try:
        reload_and_wait(tq, "tq-host")
        poison = submit(tq, "poison")
        others = [submit(tq, "task-1", str(n)) for n in range(20)]

        def dead() -> dict[str, Any] | None:
            found = job(tq, poison)
            return found if found["state"] == "dead" else None

        found = wait_until(dead, 120, "the poison job dead")
        assert found["attempts"] == 4 and "lost while running attempt 4 of 4" in found["error"], found
        for job_id in others:
            wait_done(tq, job_id)
        try:
            wait_until(lambda: tq.run(["systemctl", "is-active", *WORKERS], check=False).stdout.split()
                       == ["active"] * 4, 30, "every worker active again")
        except AssertionError:
            status = tq.run(["systemctl", "status", "--no-pager", "-n", "30", *WORKERS], check=False).stdout
            raise AssertionError(status) from None
    finally:
        tq.run("rm -f /etc/tq/tq.d/70-poison.toml && systemctl reload tq-host")


def test_cancel_stops_a_running_job_and_the_worker_carries_on(tq: Container) -> None:
    job_id = submit(tq, "slow", "60")
    worker = running_worker(tq, job_id)
    pid = unit_property(tq, worker, "MainPID")
    out = tq.run(["tqctl", "cancel", str(job_id)]).stdout
    assert "stopping it" in out, out
    wait_until(lambda: job(tq, job_id)["state"] == "cancelled", 30, f"job {job_id} cancelled")
    assert unit_property(tq, worker, "MainPID") == pid  # the same worker process takes new work
    assert tq.run("tqctl submit --wait task-1").stdout == "task-1 processed\n"


def test_queues_are_user_tq_alone_and_only_a_jobs_submitter_may_cancel_it(tq: Container) -> None:
    tq.run("id insider || useradd --no-create-home --groups tq insider")
    tq.run("id neighbour || useradd --no-create-home --groups tq neighbour")
    tq.run("mountpoint -q /dev/mqueue || mount -t mqueue mqueue /dev/mqueue")
    assert tq.run("stat -c '%a %U' /dev/mqueue/tq.host").stdout.split() == ["600", "tq"]
    job_id = int(tq.run(["tqctl", "submit", "--delay", "1h", "task-1"], user="insider").stdout)
    assert job(tq, job_id)["submitter"] == int(tq.run("id -u insider").stdout)
    refused = tq.run(["tqctl", "cancel", str(job_id)], user="neighbour", check=False)
    assert refused.returncode == 4 and "only its submitter" in refused.stderr, refused
    tq.run("getent group tq-admin")  # the package makes the admin group
    assert tq.run(["tqctl", "cancel", str(job_id)], user="insider").returncode == 0


def test_a_job_runs_as_the_host_resolved_it_whichever_daemon_was_reloaded(tq: Container) -> None:
    dropin = "/etc/tq/tq.d/80-greet.toml"
    try:
        tq.put_text('[tasks.greet]\ncommand = ["echo", "one"]\n', dropin)
        reload_and_wait(tq, "tq-host 'tq-worker@*'")
        assert tq.run("tqctl submit --wait greet").stdout == "one\n"
        tq.put_text('[tasks.greet]\ncommand = ["echo", "two"]\n', dropin)
        reload_and_wait(tq, "tq-host")  # the workers still have "one"
        assert tq.run("tqctl submit --wait greet").stdout == "two\n"
        tq.put_text('[tasks.greet]\ncommand = ["echo", "three"]\n', dropin)
        reload_and_wait(tq, "'tq-worker@*'")  # the host still has "two"
        assert tq.run("tqctl submit --wait greet").stdout == "two\n"
    finally:
        tq.run(f"rm -f {dropin} && systemctl reload tq-host 'tq-worker@*'")


def test_a_worker_says_in_status_and_its_journal_when_tq_host_is_gone_and_back(tq: Container) -> None:
    """Under the worker unit's sandbox (seccomp, PrivateUsers=, a read-only /run): the control socket's peer and
    a pidfd tell the worker that tq-host exited; it said `idle` before."""
    host = unit_property(tq, "tq-host", "MainPID")
    tq.run("systemctl stop tq-host")
    try:
        wait_until(lambda: unit_property(tq, "tq-worker@1", "StatusText")
                   == f"waiting for tq-host: tq-host (pid {host}) exited", 20, "the worker's STATUS")
    finally:
        tq.run("systemctl start tq-host")
    wait_until(lambda: unit_property(tq, "tq-worker@1", "StatusText") == "idle", 20, "the worker idle again")
    log = tq.run(["journalctl", "-u", "tq-worker@1", "-o", "cat", "--no-pager"]).stdout  # (the pids tell them)
    new = unit_property(tq, "tq-host", "MainPID")
    assert log.count(f"tq-host (pid {host}) exited; waiting for it") == 1, log
    assert log.count(f"found tq-host again (pid {new})") == 1, log


def test_a_reload_with_a_broken_dropin_fails_and_the_running_configuration_stays(tq: Container) -> None:
    """`systemctl reload` checks the configuration first (ExecReload=): it fails, and the daemons keep serving.
    A SIGHUP sent by hand is refused by the daemon, which says so in STATUS until a reload succeeds."""
    dropin = tq.put_text("[mqueue]\nmax_messages = \"lots\"\n", "/etc/tq/tq.d/99-broken.toml")
    refused = f"reload refused: {dropin}: mqueue.max_messages"
    try:
        for unit in ("tq-host", "tq-worker@1"):
            pid = unit_property(tq, unit, "MainPID")
            failed = tq.run(["systemctl", "reload", unit], check=False)
            assert failed.returncode != 0 and f"Job for {unit}.service failed" in failed.stderr, failed
            assert (unit_property(tq, unit, "ActiveState"), unit_property(tq, unit, "MainPID")) == ("active", pid)
            log = tq.run(["journalctl", "-u", unit, "-n", "20", "-o", "cat", "--no-pager"]).stdout
            assert f"{dropin}: mqueue.max_messages" in log, log
            tq.run(["systemctl", "kill", "--kill-who=main", "-s", "HUP", unit])
            wait_until(lambda u=unit: refused in unit_property(tq, u, "StatusText"), 20, f"{unit}'s STATUS")
        # The host still serves; tqctl reads only host.socket, so the broken key does not stop it either,
        # while `tqctl config check` names it.
        assert tq.run("tqctl submit --wait task-1").stdout == "task-1 processed\n"
        check = tq.run("tqctl config check", check=False)
        assert check.returncode == 2 and f"{dropin}: mqueue.max_messages" in check.stderr, check
        tq.run(f"rm {dropin}")
        tq.run("systemctl reload tq-host tq-worker@1")
        for unit in ("tq-host", "tq-worker@1"):
            assert "reload refused" not in unit_property(tq, unit, "StatusText")
    finally:
        tq.run(f"rm -f {dropin}")


def test_a_config_or_usage_error_fails_the_unit_without_a_restart(tq: Container) -> None:
    """Exit status 2 is in RestartPreventExitStatus=: the unit fails once, naming the file, and is not restarted
    (it was, 5 times in a row, each logging the same error). Its own file name: --since counts whole seconds, and
    the test before logs the same key's error for 99-broken.toml within the second."""
    dropin = tq.put_text("[mqueue]\nmax_messages = \"lots\"\n", "/etc/tq/tq.d/98-bad-at-start.toml")
    since = tq.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    try:
        assert tq.run("systemctl restart tq-host", check=False).returncode != 0
        log = tq.run(["journalctl", "-u", "tq-host", "--since", since, "-o", "cat", "--no-pager"]).stdout
        assert log.count(f"{dropin}: mqueue.max_messages") == 1, log
        assert tq.run("systemctl start 'tq-worker@not.a.name'", check=False).returncode != 0  # (and tq-host: Wants=)
        for unit in ("tq-host", "tq-worker@not.a.name"):
            # (failed already: no restart is pending, which RestartSec=2s would show as "activating")
            assert unit_property(tq, unit, "ActiveState") == "failed", unit
            assert (unit_property(tq, unit, "ExecMainStatus"), unit_property(tq, unit, "NRestarts")) == ("2", "0")
    finally:
        tq.run("systemctl reset-failed 'tq-worker@not.a.name'", check=False)  # (gone already, once failed)
        tq.run(f"rm -f {dropin} && systemctl reset-failed tq-host && systemctl start tq-host")


def test_without_the_budget_journald_drops_lines_which_the_accounting_catches(
        tq: Container, report: Callable[[str], None]) -> None:
    """The control for the drain test: with the budget lifted, journald's rate limit drops host lines.

    Late in the module: journald then suppresses tq-host for the rest of its 30 s window, until the reboot.
    journald lets a unit log 10,000 lines per 30 s, times at most 4 for free disk space, so 40,000 in a window; a
    drain can straddle two windows, so it must log more than 80,000 lines for a drop to be certain.
    """
    tq.put_text("[log]\njob_events_per_second = 1000000\n", "/etc/tq/tq.d/60-no-budget.toml")
    tq.run("systemctl restart tq-host 'tq-worker@*'")  # Type=notify: returns once each is ready
    try:
        jobs = 30000  # 90,000 host lines
        rate, before = drain(tq, jobs)
        events, summarised = job_event_accounting(tq, before, "tq-host")
        report(f"system drain, job event budget lifted: {rate} jobs/s; journald kept {events.total()} of "
               f"{3 * jobs} host job lines")
        assert summarised == 0 and events.total() < 3 * jobs, (events, summarised)
    finally:
        tq.run("rm -f /etc/tq/tq.d/60-no-budget.toml && systemctl restart tq-host 'tq-worker@*'")


def test_queued_jobs_and_enabled_workers_survive_a_reboot(tq: Container) -> None:
    tq.run("systemctl stop 'tq-worker@*'")
    ids = [submit(tq, "task-1", str(n)) for n in range(5)]
    assert {job(tq, i)["state"] for i in ids} == {"queued"}
    boot_id = tq.run("cat /proc/sys/kernel/random/boot_id").stdout
    print(f"reboot took {tq.reboot():.1f}s")
    assert tq.run("cat /proc/sys/kernel/random/boot_id").stdout != boot_id
    assert tq.run(["systemctl", "is-active", "tq-host", *WORKERS]).stdout.split() == ["active"] * 5
    for n, job_id in enumerate(ids):
        assert wait_done(tq, job_id)["result"] == f"task-1 {n} processed"


def test_reinstall_stops_the_workers_before_tq_host_and_lets_a_running_job_finish(tq: Container) -> None:
    """An upgrade restarts tq.target in one transaction: the workers stop first, each finishing its job (under
    worker.stop_timeout) and saying goodbye to a tq-host that answers; then tq-host restarts, then the workers."""
    job_id = submit(tq, "slow", "6")
    worker = running_worker(tq, job_id)
    after = cursor(tq)
    deb = tq.run("ls /root/tq_*.deb").stdout.split()[-1]
    started = time.monotonic()
    tq.run(["apt-get", "install", "-y", "--reinstall", deb], timeout=300)
    took = time.monotonic() - started
    found = wait_done(tq, job_id)
    assert found["attempts"] == 1, found  # finished on its first attempt, not handed back and run again
    log = tq.run(["journalctl", "--after-cursor", after, "-o", "cat", "--no-pager", "-u", "tq-host",
                  "-u", "tq-worker@*"]).stdout.splitlines()

    instance = worker.split("@")[1]
    stopped = [i for i, line in enumerate(log) if line == f"worker {instance} stopped"]  # tq-host answered it
    stopping = [i for i, line in enumerate(log) if line.startswith("tq-host stopping")]
    assert stopped and stopping and stopped[0] < stopping[0], log
    assert not [line for line in log if "did not answer" in line or "no live worker serves" in line], log
    print(f"apt-get install --reinstall with a 6 s job running took {took:.1f}s")
    assert took < 6 + 15, took


def test_reinstall_restarts_the_suite_and_keeps_enabled_workers_and_config(tq: Container) -> None:
    tq.run("echo '# edited by the operator' >> /etc/tq/tq.toml")
    before = unit_property(tq, "tq-worker@3", "MainPID")
    deb = tq.run("ls /root/tq_*.deb").stdout.split()[-1]
    tq.run(["apt-get", "install", "-y", "--reinstall", deb], timeout=300)
    assert tq.run(["systemctl", "is-active", "tq-host", *WORKERS]).stdout.split() == ["active"] * 5
    assert unit_property(tq, "tq-worker@3", "MainPID") != before
    assert "# edited by the operator" in tq.run("cat /etc/tq/tq.toml").stdout
    assert tq.run("tqctl submit --wait task-1").stdout == "task-1 processed\n"


def test_remove_keeps_state_and_purge_removes_it(tq: Container) -> None:
    tq.run("apt-get remove -y tq", timeout=300)
    assert tq.run("systemctl is-active tq-host tq-worker@1", check=False).stdout.split() == ["inactive"] * 2
    assert tq.run("ls /var/lib/tq/tq.sqlite3", check=False).returncode == 0
    assert tq.run("ls /usr/lib/tq", check=False).returncode != 0  # byte-code included: nothing of it is left
    tq.run("apt-get purge -y tq", timeout=300)
    assert tq.run("ls /var/lib/tq /etc/tq/tq.toml /lib/systemd/system/tq-host.service", check=False).returncode != 0
    assert tq.run("ls /etc/systemd/system/tq.target.wants", check=False).returncode != 0
