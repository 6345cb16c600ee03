"""Faults across machines (issue 28): real tq-host, real tq-worker processes on simulated worker machines (network
namespaces, tests/machines.py), a real RabbitMQ (tests/broker.py). Each case checks that nothing is lost and
nothing is done twice: every job ends done, with one "done" event, and its recording task (tq_test_handlers.work,
which records "TAG MACHINE" when it finishes) ran once on the worker tq-host took the result from.

One broker and one network of two machines for the module; each test has its own suite (host, prefix, workers).

While tq-host's own connection to the broker is down, the remote workers' silence is not counted against their
lease (a cut of one machine still is): the broker's restarts are tested with a 3 s lease, shorter than the
outages, and nothing may run twice.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from broker import Broker
from harness import Daemon, Suite, temporary_suite, wait_until
from machines import Machine, Network, network  # noqa: F401  (the fixture)
from tq.client import Client

TASKS = ('[tasks.work]\npython = "tq_test_handlers:work"\nqueue = "remote"\ntimeout = "300s"\nretries = 5\n'
         'backoff = "100ms"\n')


@pytest.fixture(scope="module")
def node(network: Network) -> Iterator[Broker]:  # noqa: F811
    """The module's broker, on loopback (tq-host) and on the bridge (the machines)."""
    with Broker(listen=(network.address,)) as b:
        yield b


@pytest.fixture
def suite(network: Network) -> Iterator[Suite]:  # noqa: F811
    with temporary_suite() as s:
        try:
            yield s
        finally:
            for m in network.machines:  # jobs a killed or cut worker left running
                m.kill_all()


def start_host(suite: Suite, node: Broker, lease: str = "3s", amqp: str = "") -> Daemon:
    suite.write_config(f'[amqp]\nurl = "{node.url}"\nqueues = ["remote"]\n{amqp}\n{TASKS}', lease=lease)
    return suite.host()


def start_workers(suite: Suite, node: Broker, net: Network, machines: list[Machine], per_machine: int = 1,
                  extra: str = "") -> dict[str, Daemon]:
    """`per_machine` workers on each machine, all live at tq-host; by name (N@MACHINE)."""
    workers = {m.name(str(i)): m.worker(suite, node.url_at(net.address), str(i), extra=extra)
               for m in machines for i in range(1, per_machine + 1)}
    client = suite.client()
    wait_until(lambda: all(states(client).get(n) == "live" for n in workers), 30, f"{list(workers)} live")
    return workers


def states(client: Client) -> dict[str, str]:
    return {w["instance"]: w["state"] for w in client.workers()}


def submit(client: Client, tags: list[str], seconds: float) -> dict[str, int]:
    ids = client.submit_many([{"task": "work", "args": [t, str(seconds)]} for t in tags])
    return dict(zip(tags, ids, strict=True))


def executions(suite: Suite) -> list[tuple[str, str]]:
    """(tag, machine) of every finished execution."""
    return [(line.split()[0], line.split()[1]) for line in suite.executions()]


def done_count(client: Client, ids: dict[str, int]) -> int:
    return sum(client.get(i)["state"] == "done" for i in ids.values())


def assert_each_done_once(suite: Suite, client: Client, ids: dict[str, int], exactly_once: bool = True,
                          timeout: float = 60, events: bool = True) -> dict[str, dict[str, Any]]:
    """Every job done, with one done event (`events`: tq-host keeps them in memory, so not across its restart),
    its result from one execution on the machine of the worker it is recorded done by; with `exactly_once`, no
    other execution either."""
    jobs = {tag: client.wait(i, timeout) for tag, i in ids.items()}
    assert {tag: j["state"] for tag, j in jobs.items()} == dict.fromkeys(ids, "done"), jobs
    runs = Counter(executions(suite))
    for tag, job in jobs.items():
        if events:
            kept = [e["event"] for e in client.events(job=ids[tag])]
            assert kept.count("done") == 1, (tag, kept)
        assert job["result"] == f"worked {tag}", job
        machine = job["worker"].split("@")[1]
        assert runs[(tag, machine)] == 1, (tag, job["worker"], runs)
    if exactly_once:
        assert Counter(tag for tag, _ in executions(suite)) == Counter(dict.fromkeys(ids, 1)), runs
    return jobs


def test_a_machine_cut_off_mid_job_its_jobs_are_done_on_another_and_its_late_results_are_ignored(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    m1, m2 = network.machines
    host = start_host(suite, node)
    cut_off = start_workers(suite, node, network, [m1], per_machine=2)
    client = suite.client()
    ids = submit(client, ["cut0", "cut1"], 3)
    wait_until(lambda: all(client.get(i)["state"] == "running" for i in ids.values()), 15, "both jobs running on m1")
    assert {client.get(i)["worker"] for i in ids.values()} == set(cut_off)
    start_workers(suite, node, network, [m2])
    m1.cut()
    try:
        wait_until(lambda: all(states(client).get(n) == "lost" for n in cut_off), 15, "m1's workers lost (host.lease)")
        jobs = assert_each_done_once(suite, client, ids, exactly_once=False)
        assert {j["worker"] for j in jobs.values()} == {m2.name("1")}
        wait_until(lambda: all((t, m1.hostname) in executions(suite) for t in ids), 30,
                   "m1 finishing what it held, cut off")
    finally:
        m1.restore()
    late = f"@{m1.hostname} "
    wait_until(lambda: sum("ignored a late result" in line and late in line for line in host.text().splitlines())
               >= 2, 120, "m1's two late results reaching tq-host")
    wait_until(lambda: all(states(client).get(n) == "live" for n in cut_off), 60, "m1's workers back and fenced")
    jobs = assert_each_done_once(suite, client, ids, exactly_once=False)  # still done once, by m2
    assert {j["worker"] for j in jobs.values()} == {m2.name("1")}
    assert sorted(executions(suite)) == sorted((t, m) for t in ids for m in (m1.hostname, m2.hostname))


def test_rabbitmq_restarted_then_killed_under_load_every_job_is_done_once(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    start_host(suite, node)  # a 3 s lease: shorter than the outages, which tq-host does not count as silence
    start_workers(suite, node, network, network.machines, per_machine=2)
    client = suite.client()
    ids = submit(client, [f"r{i}" for i in range(80)], 0.1)
    wait_until(lambda: done_count(client, ids) >= 10, 30, "10 jobs done")
    node.stop_app()
    stopped_at = done_count(client, ids)
    node.start_app()
    wait_until(lambda: done_count(client, ids) >= stopped_at + 15, 60, "15 more jobs done after start_app")
    node.kill9()
    node.start()
    assert_each_done_once(suite, client, ids, timeout=120)
    assert done_count(client, ids) == 80


def test_tq_host_stopped_for_10s_under_load_remote_workers_finish_and_their_results_are_taken_in(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    host = start_host(suite, node)
    start_workers(suite, node, network, network.machines, per_machine=2)
    client = suite.client()
    ids = submit(client, [f"h{i}" for i in range(24)], 1)
    wait_until(lambda: done_count(client, ids) >= 4, 30, "4 jobs done")
    held = [t for t, i in ids.items() if client.get(i)["state"] in ("assigned", "running")]
    assert held
    host.signal(signal.SIGTERM)
    assert host.wait(20) == 0
    client.close()
    back_at = time.monotonic() + 10  # tq-host stays down this long (the case), whatever happens meanwhile
    wait_until(lambda: time.monotonic() >= back_at, 15, "10 s with tq-host down")
    finished = {tag for tag, _ in executions(suite)}
    assert set(held) <= finished, (held, finished)  # the workers finished what they held, tq-host down
    suite.host()
    client = suite.client()
    jobs = assert_each_done_once(suite, client, ids, timeout=120, events=False)
    assert {t: jobs[t]["attempts"] for t in held} == dict.fromkeys(held, 1)  # results taken in, not run again


def test_a_job_longer_than_the_broker_s_consumer_timeout_runs_once_and_ends_done(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    assert node.consumer_timeout_ms == 60000
    start_host(suite, node)
    (worker,) = start_workers(suite, node, network, network.machines[:1]).values()
    client = suite.client()
    ids = submit(client, ["long"], 150)
    job = assert_each_done_once(suite, client, ids, timeout=240)["long"]
    assert job["attempts"] == 1, job
    assert "waiting for the broker" not in worker.text() and "channel closed" not in worker.text(), worker.text()


def test_a_25s_job_with_a_5s_heartbeat_keeps_its_connection(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    m1 = network.machines[0]
    start_host(suite, node, amqp='heartbeat = "5s"')
    (worker,) = start_workers(suite, node, network, [m1], extra='[amqp]\nheartbeat = "5s"\n').values()
    client = suite.client()
    before = connections(node, m1.address)
    assert [timeout for _, timeout in before] == [5], before  # one connection, heartbeat 5 s as asked
    ids = submit(client, ["beat"], 25)
    job = assert_each_done_once(suite, client, ids, timeout=60)["beat"]
    assert job["attempts"] == 1, job
    assert connections(node, m1.address) == before  # the same connection (connected_at), never dropped
    assert "waiting for the broker" not in worker.text() and "heartbeat" not in worker.text(), worker.text()


def test_a_worker_s_inbox_deleted_under_it_is_noticed_at_once_and_later_jobs_are_done(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    m1 = network.machines[0]
    start_host(suite, node)
    (worker,) = start_workers(suite, node, network, [m1]).values()
    client = suite.client()
    first = submit(client, ["in0", "in1", "in2"], 1)
    wait_until(lambda: client.get(first["in0"])["state"] == "running", 15, "a job running")
    node.delete_queue(f"{suite.prefix.lstrip('/')}.w.{m1.name('1')}")
    wait_until(lambda: "the broker cancelled consumer" in worker.text(), 2, "the cancel noticed")
    later = submit(client, ["in3", "in4", "in5"], 0.2)
    assert_each_done_once(suite, client, {**first, **later})


def test_a_worker_killed_mid_job_its_job_is_done_once_elsewhere_or_after_its_restart(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    m1, m2 = network.machines
    start_host(suite, node)
    (victim,) = start_workers(suite, node, network, [m1]).values()
    client = suite.client()
    ids = submit(client, ["k0", "k1"], 2)
    wait_until(lambda: client.get(ids["k0"])["state"] == "running", 15, "the job running on m1")
    start_workers(suite, node, network, [m2])
    m1.kill9(victim)  # the worker and its job's process (systemd kills the unit's cgroup)
    m1.worker(suite, node.url_at(network.address), "1")  # restarted, as Restart=always would
    jobs = assert_each_done_once(suite, client, ids)
    assert jobs["k0"]["attempts"] == 2, jobs["k0"]
    wait_until(lambda: states(client).get(m1.name("1")) == "live", 30, "m1's worker live again")


def connections(node: Broker, peer: str) -> list[tuple[str, int]]:
    """(connected_at, heartbeat timeout) of each broker connection from `peer`."""
    out = node.ctl("list_connections", "peer_host", "connected_at", "timeout", "--quiet", "--no-table-headers").stdout
    return [(at, int(timeout)) for host, at, timeout in (line.split() for line in out.splitlines() if line.strip())
            if host == peer]
