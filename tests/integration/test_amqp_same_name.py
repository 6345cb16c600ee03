"""Two worker machines whose workers have the same name (cloned VMs, equal short host names), through a real
RabbitMQ (tests/broker.py) with real tq-host and tq-worker processes. Both machines are given one name with
`[transport] machine`; the second one's /etc/machine-id is another file bound over it in a mount namespace of
its own (`unshare --mount`, as root), so that it is another machine to tq-host.

tq-host refuses the second worker: the first keeps its jobs and runs on, every job is done once, and the second
exits 78 (the unit's RestartPreventExitStatus) with one line saying why. A restart on the first machine, and
the other machine's worker once the first has stopped, are taken as before."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Broker, broker  # noqa: F401  (the fixture)
from harness import Daemon, Suite, temporary_suite, wait_until
from remoteworkers import remote_config, remote_worker
from tq.client import Client

NAME = "1@render-3"
SAME_NAME = 'machine = "render-3"\n'
TASKS = '[tasks.rec]\npython = "tq_test_handlers:record_pid"\nqueue = "remote"\nretries = 3\nbackoff = "100ms"\n'
REFUSAL = ("refused by tq-host: another worker is named 1@render-3 (pid {pid}, on another machine): give each "
           'machine its own name ([transport] machine = "...")')


def _can_bind_machine_id() -> str:
    """Why a worker cannot be given another machine id here ("" if it can)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1): a mount namespace with another /etc/machine-id"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount --bind /etc/machine-id /etc/machine-id"], capture_output=True, timeout=30)
    return "" if probe.returncode == 0 else f"cannot bind over /etc/machine-id: {probe.stderr.decode()[:200]}"


@pytest.fixture
def suite() -> Iterator[Suite]:
    why = _can_bind_machine_id()
    if why:
        pytest.skip(why)
    with temporary_suite() as s:
        yield s


def other_machine_worker(suite: Suite, config: Path, instance: str = "1") -> Daemon:
    """tq-worker as on another machine: its own /etc/machine-id (the pid stays the worker's: unshare and sh
    exec it)."""
    fake = suite.dir / f"machine-id-{uuid.uuid4().hex[:6]}"
    fake.write_text(uuid.uuid4().hex + "\n")
    argv = [*suite._python("tq.worker", instance)]
    argv[argv.index("--config") + 1] = str(config)
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/machine-id && exec "$@"', str(fake), *argv]
    d = Daemon(f"other{instance}-{uuid.uuid4().hex[:4]}", wrapped, suite.env, suite.dir)
    suite.daemons.append(d)
    return d


def workers(client: Client) -> dict[str, tuple[str, int]]:
    return {w["instance"]: (w["state"], w["pid"]) for w in client.workers()}


def test_a_second_worker_of_the_name_on_another_machine_is_refused_and_the_first_runs_every_job_once(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n{TASKS}', lease="30s")
    host = suite.host()
    first = remote_worker(suite, remote_config(suite, broker.url, "m1", transport=SAME_NAME), "1")
    client = suite.client()
    wait_until(lambda: workers(client).get(NAME) == ("live", first.pid), 30, "the first worker live")
    ids = client.submit_many([{"task": "rec", "args": [f"a{i}", "0.05"]} for i in range(60)])
    host.signal(signal.SIGSTOP)  # the second's hello waits behind the first's results (jobs may go to either)
    try:
        second = other_machine_worker(suite, remote_config(suite, broker.url, "m2", transport=SAME_NAME)).ready(60)
        time.sleep(0.5)
    finally:
        host.signal(signal.SIGCONT)
    ids += client.submit_many([{"task": "rec", "args": [f"b{i}"]} for i in range(30)])
    assert second.wait(30) == 78, second.text()
    lines = [line for line in second.text().splitlines() if "refused by tq-host" in line]
    assert len(lines) == 1 and lines[0].endswith(REFUSAL.format(pid=first.pid)), second.text()
    ids += client.submit_many([{"task": "rec", "args": [f"c{i}"]} for i in range(10)])
    for job_id in ids:
        job = client.wait(job_id, 30)
        assert (job["state"], job["attempts"], job["worker"]) == ("done", 1, NAME), job
    runs = [line.split() for line in suite.executions()]
    assert sorted(tag for tag, _ in runs) == sorted(f"{p}{i}" for p, n in (("a", 60), ("b", 30), ("c", 10))
                                                    for i in range(n))  # each once
    assert {int(pid) for _, pid in runs} <= {first.pid, second.pid}  # (the second may run some before its refusal)
    assert workers(client) == {NAME: ("live", first.pid)} and first.proc.poll() is None
    text = host.text()
    warnings = [line for line in text.splitlines() if f"refused pid {second.pid} of machine" in line]
    assert len(warnings) == 1 and f"held by pid {first.pid} of machine" in warnings[0], text
    assert "is back" not in text and "lost with it" not in text and "Traceback" not in text
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0


def test_a_restart_on_the_same_machine_and_the_name_s_next_machine_after_a_stop_are_taken(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n{TASKS}')
    host = suite.host()
    config = remote_config(suite, broker.url, "m1", transport=SAME_NAME)
    first = remote_worker(suite, config, "1")
    client = suite.client()
    wait_until(lambda: workers(client).get(NAME) == ("live", first.pid), 30, "the first worker live")
    first.signal(signal.SIGKILL)
    first.wait(10)
    again = remote_worker(suite, config, "1")  # a new pid on the same machine: a restart, adopted
    wait_until(lambda: workers(client).get(NAME) == ("live", again.pid), 30, "the restarted worker live")
    (job_id,) = client.submit_many([{"task": "rec", "args": ["after-restart"]}])
    assert client.wait(job_id, 30)["state"] == "done"
    again.signal(signal.SIGTERM)
    assert again.wait(20) == 0
    wait_until(lambda: workers(client).get(NAME) == ("stopped", again.pid), 20, "the worker stopped")
    other = other_machine_worker(suite, remote_config(suite, broker.url, "m2", transport=SAME_NAME)).ready(60)
    wait_until(lambda: workers(client).get(NAME) == ("live", other.pid), 30, "the other machine's worker live")
    (job_id,) = client.submit_many([{"task": "rec", "args": ["other-machine"]}])
    job = client.wait(job_id, 30)
    assert (job["state"], job["worker"]) == ("done", NAME)
    assert [line.split()[0] for line in suite.executions()] == ["after-restart", "other-machine"]
    assert "refused" not in host.text() and "refused" not in other.text()
