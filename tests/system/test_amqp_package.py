"""The README's "Across machines" on a real systemd: the built .deb in a booted bookworm, a RabbitMQ node beside it,
tq-host given the network by the README's drop-in, and tq-worker@1 through the broker as `1@MACHINE` under its
hardened unit: a job of a broker queue done by it, READY only once connected, the password nowhere.

The container and the broker share one network namespace of their own (`ip netns add`), so the container's
127.0.0.1 reaches the node (tests/broker.py runs it there) and nothing else is exposed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nspawn import Container, install_package
from test_package import job, submit, unit_property, wait_done, wait_until

from broker import PASSWORD, USER, Broker

pytestmark = pytest.mark.system
DROP_IN = "[Service]\nPrivateNetwork=no\nIPAddressDeny=\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"


@pytest.fixture(scope="module")
def node(netns: str) -> Iterator[Broker]:
    with Broker(netns=netns) as b:
        yield b


@pytest.fixture(scope="module")
def machine(netns_container: Container, node: Broker) -> Container:
    try:
        return install_package(netns_container)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def test_a_worker_through_the_broker_under_its_unit_does_a_job_of_a_broker_queue(machine: Container,
                                                                                node: Broker) -> None:
    url = f"amqp://{USER}@127.0.0.1:{node.port}/"
    machine.put_text(PASSWORD + "\n", "/etc/tq/amqp.pass")
    machine.run("chgrp tq /etc/tq/amqp.pass && chmod 0640 /etc/tq/amqp.pass")
    machine.put_text(f'[amqp]\nurl = "{url}"\npassword_file = "/etc/tq/amqp.pass"\nqueues = ["render"]\n'
                     f'[transport]\nkind = "amqp"\nurl = "{url}"\npassword_file = "/etc/tq/amqp.pass"\n'
                     '[worker]\nqueues = ["render"]\n', "/etc/tq/tq.d/50-amqp.toml")
    # Before the README's drop-in: the unit's RestrictAddressFamilies= refuses the broker's socket. tq-host says so
    # and serves this machine's queues (it used to exit on the socket's error and take them down with it).
    machine.run("systemctl restart tq-host")
    wait_until(lambda: "waiting for the broker" in unit_property(machine, "tq-host", "StatusText"), 60,
               "tq-host waiting for the broker")
    status = unit_property(machine, "tq-host", "StatusText")
    assert "Address family not supported" in status, status
    assert unit_property(machine, "tq-host", "ActiveState") == "active"
    assert wait_done(machine, submit(machine, "task-1", "here"))["state"] == "done"
    machine.put_text(DROP_IN, "/etc/systemd/system/tq-host.service.d/amqp.conf")
    machine.run("systemctl daemon-reload && systemctl restart tq-host tq-worker@1")
    name = f"1@{machine.run('hostname -s').stdout.strip()}"

    def live() -> bool:
        return f"{name} " in machine.run(["tqctl", "workers"]).stdout and \
            unit_property(machine, "tq-worker@1", "StatusText") != ""
    wait_until(live, 60, f"{name} live")
    assert unit_property(machine, "tq-worker@1", "ActiveState") == "active"  # READY came once connected
    job_id = submit(machine, "--queue", "render", "task-1", "frame")
    done = wait_done(machine, job_id)
    assert done["worker"] == name and done["result"] == "task-1 frame processed", done
    workers = machine.run(["tqctl", "workers"]).stdout
    assert "MACHINE" in workers and name in workers
    journal = machine.run(["journalctl", "--no-pager", f"TQ_WORKER={name}"]).stdout
    assert f"job {job_id} done" in journal, journal[-2000:]
    assert "connected to the broker" in journal, journal[-2000:]  # its own lines too, not only its jobs'
    for where in (machine.run(["journalctl", "--no-pager"]).stdout, machine.run(["tqctl", "config", "check"]).stdout,
                  unit_property(machine, "tq-worker@1", "StatusText"), unit_property(machine, "tq-host", "StatusText")):
        assert PASSWORD not in where
    assert job(machine, job_id)["attempts"] == 1


def test_a_worker_restarted_while_the_broker_is_down_starts_says_it_waits_and_connects_when_it_is_back(
        machine: Container, node: Broker) -> None:
    node.stop_app()
    try:
        restart = machine.run("systemctl restart tq-worker@1", check=False, timeout=60)
        assert restart.returncode == 0, restart.stderr  # READY after its wait: no start timeout, no restart loop
        assert unit_property(machine, "tq-worker@1", "ActiveState") == "active"
        status = unit_property(machine, "tq-worker@1", "StatusText")
        assert status.startswith("waiting for the broker"), status
    finally:
        node.start_app()
    wait_until(lambda: unit_property(machine, "tq-worker@1", "StatusText") == "idle", 90, "connected again")
    job_id = submit(machine, "--queue", "render", "task-1", "again")
    assert wait_done(machine, job_id)["result"] == "task-1 again processed"


def test_a_worker_refused_its_name_by_tq_host_exits_78_and_its_unit_does_not_restart_it(machine: Container) -> None:
    """Another machine (here: its own /etc/machine-id and /run/tq/workers in a mount namespace, the same host
    name) holds 1@HOST: tq-worker@1 is refused, exits 78, and RestartPreventExitStatus=78 leaves it failed."""
    name = f"1@{machine.run('hostname -s').stdout.strip()}"
    machine.run("systemctl stop tq-worker@1")
    machine.put_text("0123456789abcdef0123456789abcdef\n", "/root/other-machine-id")
    other = ('mount --bind /root/other-machine-id /etc/machine-id && mount -t tmpfs tmpfs /run/tq/workers && '
             'exec setpriv --reuid=tq --regid=tq --init-groups /usr/bin/tq-worker 1')
    machine.run(["systemd-run", "--unit=tq-other-machine", "-p", "LimitMSGQUEUE=64M",
                 "unshare", "--mount", "--propagation", "private", "sh", "-c", other])
    try:
        def other_live() -> bool:
            pid = unit_property(machine, "tq-other-machine", "MainPID")
            return any(line.split()[:1] == [name] and pid in line.split()
                       for line in machine.run(["tqctl", "workers"]).stdout.splitlines())
        wait_until(other_live, 60, f"the other machine's {name} live")
        machine.run("systemctl start tq-worker@1", check=False, timeout=60)
        wait_until(lambda: unit_property(machine, "tq-worker@1", "ActiveState") == "failed", 60,
                   "tq-worker@1 failed")
        assert unit_property(machine, "tq-worker@1", "ExecMainStatus") == "78"
        assert unit_property(machine, "tq-worker@1", "SubState") == "failed"  # not auto-restart
        assert unit_property(machine, "tq-worker@1", "NRestarts") == "0"
        journal = machine.run("journalctl -u tq-worker@1 -o cat --no-pager").stdout
        assert f"refused by tq-host: another worker is named {name}" in journal, journal[-2000:]
        assert unit_property(machine, "tq-other-machine", "ActiveState") == "active"  # the first one runs on
        job_id = submit(machine, "--queue", "render", "task-1", "other")
        assert wait_done(machine, job_id)["result"] == "task-1 other processed"
    finally:
        machine.run("systemctl stop tq-other-machine", check=False)
        machine.run("systemctl reset-failed tq-worker@1", check=False)
