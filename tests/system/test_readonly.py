"""The package in a container whose /proc/sys is read-only and whose queue budget cannot be raised (no
CAP_SYS_RESOURCE, so LimitMSGQUEUE= cannot lift RLIMIT_MSGQUEUE): tq runs with what the kernel grants."""

from __future__ import annotations

import json

import pytest
from nspawn import Container, install_package

pytestmark = pytest.mark.system
WORKERS = ("tq-worker@1", "tq-worker@2", "tq-worker@3", "tq-worker@4")


@pytest.fixture(scope="module")
def tq(readonly_container: Container) -> Container:
    try:
        return install_package(readonly_container)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def test_the_host_and_four_workers_start_with_what_the_kernel_grants_and_say_so(tq: Container) -> None:
    assert tq.run("cat /proc/sys/fs/mqueue/msg_max").stdout.strip() == "10"  # the package could not raise it
    assert tq.run("sh -c 'echo 256 > /proc/sys/fs/mqueue/msg_max'", check=False).returncode != 0
    assert tq.installed is not None
    said = tq.installed.stdout + tq.installed.stderr
    assert "tq: could not raise fs.mqueue.msg_max to 256 (/usr/lib/sysctl.d/60-tq.conf): it stays 10" in said, said
    tq.run(["systemctl", "enable", "--now", *WORKERS])
    assert tq.run(["systemctl", "is-active", "tq-host", *WORKERS]).stdout.split() == ["active"] * 5
    status = json.loads(tq.run("tqctl status --json").stdout)
    assert status["workers_live"] == 4 and status["mqueue"]["max_messages"] == 10, status
    (note,) = status["mqueue"]["limited"]
    assert note.startswith("mqueue.max_messages = 32 exceeds fs.mqueue.msg_max = 10: using 10"), note
    assert "queue limits: mqueue.max_messages = 32" in tq.run("tqctl status").stdout
    log = tq.run("journalctl -u tq-host -o cat --no-pager").stdout
    assert log.count("exceeds fs.mqueue.msg_max = 10") == 1, log  # said once


def test_jobs_run_and_one_too_large_for_the_granted_size_is_refused_naming_it(tq: Container) -> None:
    assert tq.run("tqctl submit --wait task-1").stdout == "task-1 processed\n"
    ids = [int(tq.run(["tqctl", "submit", "task-1", str(n)]).stdout) for n in range(20)]
    for job_id in ids:
        assert tq.run(["tqctl", "result", "--wait", "--wait-timeout", "30s", str(job_id)]).returncode == 0
    big = tq.run(["tqctl", "submit", "task-1", "x" * 9000], check=False)
    assert big.returncode == 2 and "mqueue.max_message_size is 8192 bytes" in big.stderr, big
