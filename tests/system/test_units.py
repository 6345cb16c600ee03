"""The units and packaging/ files on a real systemd, without the package.

tq-host, tq-worker and tq-gateway are replaced by probe_daemon.py, which does
under the units' sandbox what the daemons do at the system level (POSIX queue,
state and runtime directories, the socket systemd passes, sd_notify with
watchdog).
"""

from __future__ import annotations

import re
import time

import pytest
from nspawn import REPO, Container

pytestmark = pytest.mark.system
UNITS = ("tq-host.service", "tq-worker@.service", "tq.target", "tq-metrics.service", "tq-metrics.timer",
         "tq-gateway.socket", "tq-gateway.service")
EXPOSURE_LIMIT = 1.5
READ_SOCKET = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=20); "
               "print(s.makefile().readline(), end='')")


@pytest.fixture(scope="module")
def units(container: Container) -> Container:
    for unit in UNITS:
        container.put(REPO / "units" / unit, f"/etc/systemd/system/{unit}")
    for program in ("tq-host", "tq-worker", "tq-gateway"):
        container.put(REPO / "tests/system/probe_daemon.py", f"/usr/bin/{program}", mode=0o755)
    container.run("printf '#!/bin/sh\\n' > /usr/bin/tqctl && chmod 755 /usr/bin/tqctl")  # tq-metrics' program
    container.put(REPO / "packaging/sysusers.d/tq.conf", "/usr/lib/sysusers.d/tq.conf")
    container.put(REPO / "packaging/tmpfiles.d/tq.conf", "/usr/lib/tmpfiles.d/tq.conf")
    container.put(REPO / "packaging/sysctl.d/60-tq.conf", "/usr/lib/sysctl.d/60-tq.conf")
    container.run("systemctl daemon-reload")
    return container


def test_container_boots_systemd(container: Container) -> None:
    assert container.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running"


def test_units_verify_clean(units: Container) -> None:
    paths = [f"/etc/systemd/system/{unit}" for unit in UNITS]
    # --man=no: the man pages of Documentation= come with the package (test_package.py checks them there)
    result = units.run(["systemd-analyze", "verify", "--man=no", *paths, "tq-worker@1.service"])
    assert result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("unit", ["tq-host.service", "tq-worker@1.service", "tq-metrics.service",
                                  "tq-gateway.service"])
def test_unit_security_exposure_is_at_most_1_5(units: Container, unit: str) -> None:
    report = units.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", report)
    assert found, report
    exposure = float(found.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT, report


def test_packaging_files_create_user_dirs_and_raise_mqueue_limits(units: Container) -> None:
    units.run("systemd-sysusers tq.conf && systemd-tmpfiles --create tq.conf"
              " && /lib/systemd/systemd-sysctl 60-tq.conf")
    assert units.run("getent passwd tq").stdout.split(":")[5] == "/var/lib/tq"
    assert units.run("stat -c '%U:%G %a' /var/lib/tq /run/tq").stdout.split() == ["tq:tq", "750"] * 2
    assert units.run("cat /proc/sys/fs/mqueue/msg_max /proc/sys/fs/mqueue/msgsize_max").stdout.split() == [
        "256", "65536"]


def test_daemons_run_under_the_units_sandbox(units: Container) -> None:
    units.run("systemctl start tq-host tq-worker@1 tq-worker@2")
    assert units.run("systemctl is-active tq-host tq-worker@1 tq-worker@2").stdout.split() == ["active"] * 3
    listing = units.run("stat -c '%n %U:%G %a' /dev/mqueue/tq.probe.host /dev/mqueue/tq.probe.1").stdout
    assert listing.split("\n")[:2] == ["/dev/mqueue/tq.probe.host tq:tq 660", "/dev/mqueue/tq.probe.1 tq:tq 660"]
    assert units.run("cat /var/lib/tq/probe.host /run/tq/probe.host").stdout == "ok\nok\n"


def test_enabling_the_target_enables_host_and_worker_1(units: Container) -> None:
    units.run("systemctl enable tq.target")
    wants = units.run("ls /etc/systemd/system/tq.target.wants").stdout.split()
    assert wants == ["tq-host.service", "tq-worker@1.service"]
    assert units.run("systemctl is-enabled tq.target tq-host tq-worker@1").stdout.split() == ["enabled"] * 3


def test_host_restart_leaves_workers_running(units: Container) -> None:
    before = units.run("systemctl show -p MainPID --value tq-worker@1").stdout
    units.run("systemctl restart tq-host")
    assert units.run("systemctl show -p MainPID --value tq-worker@1").stdout == before


def test_target_restart_restarts_host_and_workers(units: Container) -> None:
    pids = "systemctl show -p MainPID --value tq-host tq-worker@1 tq-worker@2"
    before = units.run(pids).stdout.split()
    units.run("systemctl restart tq.target")
    time.sleep(0.5)
    after = units.run(pids).stdout.split()
    assert all(old != new for old, new in zip(before, after, strict=True)), (before, after)


def test_worker_killed_by_signal_is_restarted(units: Container) -> None:
    units.run("systemctl kill -s KILL tq-worker@2")
    time.sleep(3)  # RestartSec=2s
    assert units.run("systemctl show -p NRestarts --value tq-worker@2").stdout.strip() == "1"
    assert units.run("systemctl is-active tq-worker@2").stdout.strip() == "active"


def test_sysusers_file_is_the_one_the_package_installs() -> None:
    assert (REPO / "debian/tq.sysusers").read_text() == (REPO / "packaging/sysusers.d/tq.conf").read_text()


def test_gateway_user_is_in_group_tq(units: Container) -> None:
    units.run("systemd-sysusers tq.conf")
    assert units.run("getent passwd tq-gateway").stdout.split(":")[6].strip() in ("/usr/sbin/nologin",
                                                                                  "/sbin/nologin")
    assert units.run("id -nG tq-gateway").stdout.split() == ["tq-gateway", "tq"]


def test_gateway_socket_starts_the_service_as_tq_gateway_with_group_tq_at_the_first_connection(
        units: Container) -> None:
    units.run("systemd-sysusers tq.conf && systemd-tmpfiles --create tq.conf")
    units.run("systemctl start tq-gateway.socket")
    try:
        assert units.run("systemctl is-active tq-gateway.service", check=False).stdout.strip() == "inactive"
        line = units.run(["python3", "-c", READ_SOCKET, "8790"]).stdout
        ids = units.run("id -u tq-gateway && getent group tq | cut -d: -f3").stdout.split()
        uid, groups, run_tq = line.split(" ", 2)
        assert uid == f"uid={ids[0]}" and ids[1] in groups.removeprefix("groups=").split(","), (line, ids)
        assert not run_tq.startswith("run_tq=error"), line  # group tq opens /run/tq, where tq-host's socket is
        assert units.run("systemctl is-active tq-gateway.service").stdout.strip() == "active"
        # A second connection goes to the same process: the listening socket was passed, not one per connection.
        pid = units.run("systemctl show -p MainPID --value tq-gateway.service").stdout
        units.run(["python3", "-c", READ_SOCKET, "8790"])
        assert units.run("systemctl show -p MainPID --value tq-gateway.service").stdout == pid
    finally:
        units.run("systemctl stop tq-gateway.socket tq-gateway.service")


def test_gateway_socket_address_is_changed_by_a_drop_in(units: Container) -> None:
    """What the socket unit's comment tells an operator: an empty ListenStream= and then the new address."""
    dropin = "/etc/systemd/system/tq-gateway.socket.d/50-address.conf"
    units.put_text("[Socket]\nListenStream=\nListenStream=127.0.0.1:8791\n", dropin)
    units.run("systemctl daemon-reload && systemctl start tq-gateway.socket")
    try:
        assert units.run("systemctl show -p Listen --value tq-gateway.socket").stdout.split() == [
            "127.0.0.1:8791", "(Stream)"]
        assert units.run(["python3", "-c", READ_SOCKET, "8791"]).stdout.startswith("uid=")
    finally:
        units.run(f"systemctl stop tq-gateway.socket tq-gateway.service; rm -rf {dropin.rsplit('/', 1)[0]}; "
                  "systemctl daemon-reload")
