"""Faults across machines (issue 28): real tq-host, real tq-worker processes on simulated worker machines (network
namespaces, tests/machines.py), a real RabbitMQ (tests/broker.py). Each case checks that nothing is lost and
nothing is done twice: every job ends done, with one "done" event, and its recording task (tq_test_handlers.work,
which records "TAG MACHINE" when it finishes) ran once on the worker tq-host took the result from.

One broker and one network of two machines for the module; each test has its own suite (host, prefix, workers).
"""

from __future__ import annotations

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
                          timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Every job done, with one done event, its result from one execution on the machine of the worker it is
    recorded done by; with `exactly_once`, no other execution either."""
    jobs = {tag: client.wait(i, timeout) for tag, i in ids.items()}
    assert {tag: j["state"] for tag, j in jobs.items()} == dict.fromkeys(ids, "done"), jobs
    runs = Counter(executions(suite))
    for tag, job in jobs.items():
        events = [e["event"] for e in client.events(job=ids[tag])]
        assert events.count("done") == 1, (tag, events)
        assert job["result"] == f"worked {tag}", job
        machine = job["worker"].split("@")[1]
        assert runs[(tag, machine)] == 1, (tag, job["worker"], runs)
    if exactly_once:
        assert Counter(tag for tag, _ in executions(suite)) == Counter(dict.fromkeys(ids, 1)), runs
    return jobs


def test_rabbitmq_restarted_then_killed_under_load_every_job_is_done_once(
        suite: Suite, node: Broker, network: Network) -> None:  # noqa: F811
    start_host(suite, node, lease="30s")  # longer than the outages: no worker is presumed lost (see the docstring)
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


def connections(node: Broker, peer: str) -> list[tuple[str, int]]:
    """(connected_at, heartbeat timeout) of each broker connection from `peer`."""
    out = node.ctl("list_connections", "peer_host", "connected_at", "timeout", "--quiet", "--no-table-headers").stdout
    return [(at, int(timeout)) for host, at, timeout in (line.split() for line in out.splitlines() if line.strip())
            if host == peer]
