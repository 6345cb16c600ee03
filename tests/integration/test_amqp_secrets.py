"""The broker's password and TLS files as an operator handles them (trial D, findings 2 and 3), on a real broker
and real processes: a password rotated in its file and `systemctl reload` (SIGHUP) is used from the next
connection, and said so; a password file that cannot be read is a wait said in the log and STATUS, as a refused
login is, retried at each connection attempt: tq-host serves this machine's queues meanwhile, and both it and a
remote worker connect once the file can be read, without a restart."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Broker, broker  # noqa: F401  (the fixture)
from harness import Daemon, Suite, wait_until
from remoteworkers import remote_config, remote_worker
from tq.client import Client
from tq.transport.machines import machine_instance

TASKS = '[tasks.far]\nhandler = "echo"\nqueue = "remote"\n[tasks.near]\nhandler = "echo"\n'
CHANGED = "broker password changed: used from the next connection"


@pytest.fixture
def user(broker: Broker) -> Iterator[str]:  # noqa: F811
    """A broker user of this test's own, whose password the test changes."""
    name = "tqrotate"
    assert broker.ctl("add_user", name, "Old-Pass-1").returncode == 0
    assert broker.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*").returncode == 0
    yield name
    broker.ctl("delete_user", name)


def start(suite: Suite, broker: Broker, user: str, host_pw: Path, worker_pw: Path,  # noqa: F811
          ready: bool = True) -> tuple[Daemon, Daemon]:
    url = f"amqp://{user}@127.0.0.1:{broker.port}/"
    suite.write_config(f'[amqp]\nurl = "{url}"\npassword_file = "{host_pw}"\nqueues = ["remote"]\n{TASKS}')
    host = suite.host()
    worker = remote_worker(suite, remote_config(suite, url, "m1", transport=f'password_file = "{worker_pw}"\n'),
                           ready=ready)
    return host, worker


def far_job_done(c: Client, tag: str) -> None:
    wait_until(lambda: {w["instance"]: w["state"] for w in c.workers()}.get(machine_instance("1")) == "live", 60,
               "the remote worker live")
    (job_id,) = c.submit_many([{"task": "far", "args": [tag]}])
    assert c.wait(job_id, 60)["state"] == "done"


def test_a_password_rotated_and_reloaded_is_used_from_the_next_connection_and_said_so(
        suite: Suite, broker: Broker, user: str) -> None:  # noqa: F811
    host_pw, worker_pw = suite.dir / "host.pass", suite.dir / "worker.pass"
    for f in (host_pw, worker_pw):
        f.write_text("Old-Pass-1\n")
    host, worker = start(suite, broker, user, host_pw, worker_pw)
    c = suite.client()
    far_job_done(c, "before")
    assert broker.ctl("change_password", user, "New-Pass-2").returncode == 0
    for f in (host_pw, worker_pw):
        f.write_text("New-Pass-2\n")
    for d in (host, worker):
        d.signal(signal.SIGHUP)
    for d in (host, worker):
        wait_until(lambda d=d: CHANGED in d.text(), 15, f"{d.name}: the reload saying the password changed")  # type: ignore[misc]
    assert broker.ctl("close_all_connections", "test close").returncode == 0
    for d in (host, worker):
        wait_until(lambda d=d: d.text().count("connected to the broker at") >= 2, 30,  # type: ignore[misc]
                   f"{d.name} connected again")
    far_job_done(c, "after")
    for d in (host, worker):
        assert "refused the login" not in d.text() and "New-Pass-2" not in d.text(), d.text()


def test_a_password_file_that_cannot_be_read_is_a_wait_and_local_queues_are_served(
        suite: Suite, broker: Broker, user: str) -> None:  # noqa: F811
    host_pw, worker_pw = suite.dir / "host.pass", suite.dir / "worker.pass"  # not there yet
    host, worker = start(suite, broker, user, host_pw, worker_pw, ready=False)
    local = suite.worker()
    c = suite.client()
    said = f"cannot read the broker's password from {host_pw}: No such file or directory"
    wait_until(lambda: said in host.text(), 15, "tq-host saying why it waits")
    assert said in c.status()["broker"].get("detail", ""), c.status()
    (job_id,) = c.submit_many([{"task": "near", "args": ["here"]}])
    assert c.wait(job_id, 30)["state"] == "done"  # this machine's queues are served meanwhile
    wait_until(lambda: f"cannot read the broker's password from {worker_pw}" in worker.text(), 30,
               "the worker saying why it waits")
    assert host.proc.poll() is None and worker.proc.poll() is None and local.proc.poll() is None
    for f in (host_pw, worker_pw):
        f.write_text("Old-Pass-1\n")
    far_job_done(c, "read at last")  # at the next attempt of each: no restart
