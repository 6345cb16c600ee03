"""amqps: tq-host and a remote worker reach a real RabbitMQ over TLS, each checking the broker's certificate
and showing its own (the test broker asks for one and refuses a client without). A worker that does not trust
the broker, and one that speaks TLS to a plain port, wait with their unit up and say why in one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import PASSWORD, USER, Broker
from harness import Daemon, Suite, temporary_suite, wait_until
from remoteworkers import remote_config, remote_worker
from tlsfiles import Pair, authority, issue
from tq.transport.machines import machine_instance


@pytest.fixture
def suite() -> Iterator[Suite]:
    with temporary_suite() as s:
        yield s


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pair, Pair, Pair]:
    """The test authority, the broker's certificate (for 127.0.0.1) and a client's."""
    d = tmp_path_factory.mktemp("pki")
    ca = authority(d, "tq-test-ca")
    return ca, issue(ca, d, "broker", ("127.0.0.1",)), issue(ca, d, "worker")


@pytest.fixture(scope="module")
def tls_broker(pki: tuple[Pair, Pair, Pair]) -> Iterator[Broker]:
    ca, server, _ = pki
    with Broker(tls=(ca.cert, server.cert, server.key)) as b:
        yield b


def tls_keys(ca: Path, client: Pair) -> str:
    return f'ca_file = "{ca}"\ncert_file = "{client.cert}"\nkey_file = "{client.key}"\n'


def test_a_job_goes_to_a_remote_worker_and_back_over_tls(
        suite: Suite, tls_broker: Broker, pki: tuple[Pair, Pair, Pair]) -> None:
    ca, _, client = pki
    url = f"amqps://{USER}:{PASSWORD}@127.0.0.1:{tls_broker.tls_port}/"
    suite.write_config(f'[amqp]\nurl = "{url}"\n{tls_keys(ca.cert, client)}queues = ["remote"]\n')
    host = suite.host()
    remote_worker(suite, remote_config(suite, url, "m1", transport=tls_keys(ca.cert, client)), "1")
    c = suite.client()
    name = machine_instance("1")
    wait_until(lambda: {w["instance"]: w["state"] for w in c.workers()}.get(name) == "live", 30,
               "the remote worker live")
    (job_id,) = c.submit_many([{"task": "t", "args": ["sealed"], "queue": "remote"}])
    done = c.wait(job_id, 30)
    assert done["state"] == "done" and done["worker"] == name and done["result"] == "t sealed processed"
    rows = tls_broker.ctl("list_connections", "ssl", "peer_cert_subject", "client_properties", "--quiet",
                          "--no-table-headers")
    ours = {name: line for line in rows.stdout.splitlines() for name in ("tq-host", "tq-worker@1")
            if f'"{name}"' in line}
    assert sorted(ours) == ["tq-host", "tq-worker@1"], (rows.stdout, rows.stderr)
    assert all(line.startswith("true\tCN=worker\t") for line in ours.values()), rows.stdout
    assert host.proc.poll() is None and PASSWORD not in host.text() and "Traceback" not in host.text()


def test_a_worker_that_does_not_trust_the_broker_or_meets_a_plain_port_waits_and_says_why(
        suite: Suite, tls_broker: Broker, pki: tuple[Pair, Pair, Pair]) -> None:
    _, _, client = pki
    stranger = authority(suite.dir, "another-ca")
    url = f"amqps://{USER}:{PASSWORD}@127.0.0.1:{tls_broker.tls_port}/"
    untrusting = remote_worker(suite, remote_config(suite, url, "m2", transport=tls_keys(stranger.cert, client)),
                               "2", ready=False)
    status = untrusting.notify.wait_for(lambda m: m.startswith("STATUS=waiting for the broker"), 30)
    assert "127.0.0.1:" in status and "is not trusted: self-signed certificate in certificate chain" in status, status
    plain = f"amqps://{USER}:{PASSWORD}@127.0.0.1:{tls_broker.port}/"  # the broker's plain AMQP port
    mismatched = remote_worker(suite, remote_config(suite, plain, "m3", transport=tls_keys(stranger.cert, client)),
                               "3", ready=False)
    status = mismatched.notify.wait_for(lambda m: m.startswith("STATUS=waiting for the broker"), 30)
    assert "TLS with the broker at amqps://tq:***@127.0.0.1" in status, status
    for d in (untrusting, mismatched):
        wait_until(retrying(d), 30, "a retry said in the log")
        assert d.proc.poll() is None and "READY=1" not in d.notify.messages
        assert PASSWORD not in d.text() and "Traceback" not in d.text()


def retrying(d: Daemon) -> Callable[[], bool]:
    return lambda: "retrying in" in d.text()
