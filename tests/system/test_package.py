"""SPEC section 1 on a real systemd: the built .deb installed with apt in a clean bookworm.

The tests share one container and run in file order, each leaving tq running.
The package comes from TQ_DEB or the newest dist/tq_*.deb (`make deb`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nspawn import REPO, Container

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
    found = [Path(os.environ["TQ_DEB"])] if os.environ.get("TQ_DEB") else sorted(
        (REPO / "dist").glob("tq_*.deb"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.fail("no package: run `make deb` (or set TQ_DEB)", pytrace=False)
    deb = container.put(found[-1], f"/root/{found[-1].name}")
    container.run(["apt-get", "install", "-y", deb], timeout=300)
    return container


def test_install_creates_user_applies_sysctl_and_starts_host_and_worker_1(tq: Container) -> None:
    assert tq.run("getent group tq").stdout.startswith("tq:")
    assert tq.run("cat /proc/sys/fs/mqueue/msg_max").stdout.strip() == "256"
    assert tq.run("systemctl is-active tq.target tq-host tq-worker@1").stdout.split() == ["active"] * 3
    assert tq.run("systemctl is-enabled tq.target tq-host tq-worker@1").stdout.split() == ["enabled"] * 3
    assert tq.run("dpkg-query -W -f '${Conffiles}' tq").stdout.split()[0] == "/etc/tq/tq.toml"


def test_installed_units_verify_clean(tq: Container) -> None:
    result = tq.run("systemd-analyze verify tq-host.service tq-worker@1.service tq.target")
    assert result.stdout == "" and result.stderr == ""


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


def test_broken_dropin_is_refused_on_reload_and_names_the_file_on_restart(tq: Container) -> None:
    tq.put_text("[mqueue]\nmax_messages = \"lots\"\n", "/etc/tq/tq.d/99-broken.toml")
    since = tq.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()

    def host_log() -> str:
        return tq.run(["journalctl", "-u", "tq-host", "--since", since, "-o", "cat", "--no-pager"]).stdout

    try:
        tq.run("systemctl reload tq-host")
        wait_until(lambda: "99-broken.toml" in host_log(), 20, "the reload error in the journal")
        assert unit_property(tq, "tq-host", "ActiveState") == "active"
        # tqctl itself refuses the broken drop-in, so ask with a copy that has none: the host still serves.
        tq.run("cp /etc/tq/tq.toml /root/plain.toml")
        assert tq.run("tqctl --config /root/plain.toml submit --wait task-1").stdout == "task-1 processed\n"

        assert tq.run("systemctl restart tq-host", check=False).returncode != 0
        assert host_log().count("99-broken.toml") >= 2, host_log()
    finally:
        tq.run("rm -f /etc/tq/tq.d/99-broken.toml && systemctl reset-failed tq-host && systemctl start tq-host")


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
    tq.run("apt-get purge -y tq", timeout=300)
    assert tq.run("ls /var/lib/tq /etc/tq/tq.toml /lib/systemd/system/tq-host.service", check=False).returncode != 0
    assert tq.run("ls /etc/systemd/system/tq.target.wants", check=False).returncode != 0
