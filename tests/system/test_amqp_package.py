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
