"""tq-host's own link to the broker silent without a close (trial D, finding 1): a frozen broker (SIGSTOP), or
tq-host's packets dropped (iptables on loopback: only tq-host reaches the broker there; the machines reach it
on the bridge). tq-host cannot tell a remote worker's silence from its own link's then, so it does not count it
against the lease: no worker is lost, every job is done once, at its first attempt.

A 3 s lease and `[amqp] heartbeat = "2s"` (the broker sends a heartbeat each second when it has nothing else to
send); the outages are longer than the lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from test_amqp_faults import assert_each_done_once, node, start_host, start_workers, states, submit, suite  # noqa: F401  (the fixtures)

from broker import Broker
from harness import Suite, wait_until
from machines import Network, network  # noqa: F401  (the fixture)
from tq.client import Client


def outage(client: Client, seconds: float, remote: list[str]) -> set[str]:
    """Watch the remote workers' states for `seconds` (the outage's length is the case); those seen lost."""
    lost: set[str] = set()
    end = time.monotonic() + seconds

    def over() -> bool:
        lost.update(n for n, s in states(client).items() if n in remote and s == "lost")
        return time.monotonic() >= end
    wait_until(over, seconds + 10, f"{seconds} s of outage")
    return lost


def run_through(suite: Suite, node: Broker, network: Network, cut: Callable[[], None],  # noqa: F811
                mend: Callable[[], None], seconds: float) -> None:
    host = start_host(suite, node, amqp='heartbeat = "2s"')  # a 3 s lease
    remote = list(start_workers(suite, node, network, network.machines))
    client = suite.client()
    ids = submit(client, ["s0", "s1"], seconds / 2 + 2)
    wait_until(lambda: all(client.get(i)["state"] == "running" for i in ids.values()), 15, "both jobs running")
    cut()
    try:
        lost = outage(client, seconds, remote)
    finally:
        mend()
    assert not lost, host.text()
    jobs = assert_each_done_once(suite, client, ids, timeout=60)
    assert {t: j["attempts"] for t, j in jobs.items()} == dict.fromkeys(ids, 1), jobs
    assert " lost: no message" not in host.text(), host.text()
    wait_until(lambda: all(states(client).get(n) == "live" for n in remote), 30, "the workers live")


def test_the_broker_frozen_longer_than_the_lease_no_worker_is_lost_and_each_job_is_done_once(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    assert node.proc is not None
    group = node.proc.pid  # (started in a session of its own: the node's processes are its group)
    run_through(suite, node, network, lambda: os.killpg(group, signal.SIGSTOP),
                lambda: os.killpg(group, signal.SIGCONT), 8)


def test_tq_host_s_link_cut_longer_than_the_lease_no_worker_is_lost_and_each_job_is_done_once(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    rules = [["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(node.port), "-j", "DROP"],
             ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(node.port), "-j", "DROP"]]

    def iptables(op: str) -> None:
        for rule in rules:
            subprocess.run(["iptables", op, *rule], check=op == "-I", capture_output=True)
    if subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no iptables here")
    run_through(suite, node, network, lambda: iptables("-I"), lambda: iptables("-D"), 12)
