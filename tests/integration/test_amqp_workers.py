"""Workers on "other machines" through a real RabbitMQ (tests/broker.py), with real tq-host and tq-worker processes:
tq-host with [amqp] queues, a worker with [transport] kind = "amqp" and its own configuration (as on a machine of
its own), a job of a broker queue done remotely while the other queues stay on this machine's POSIX queues."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import posix_ipc
import pytest

from broker import Broker, broker  # noqa: F401  (the fixture)
from etchosts import hosts_name
from harness import Suite, temporary_suite, wait_until
from remoteworkers import remote_config, remote_worker
from tq.transport.machines import machine_instance

SECRET = "s3cret-not-logged"


@pytest.fixture
def suite() -> Iterator[Suite]:
    with temporary_suite() as s:
        yield s


def test_a_job_of_a_broker_queue_runs_on_a_remote_worker_and_the_others_stay_local(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n')
    suite.host()
    suite.worker("1")  # a local worker serving default (and, it says, remote: not given through POSIX)
    remote = remote_worker(suite, remote_config(suite, broker.url, "m1"), "1")
    client = suite.client()
    name = machine_instance("1")
    wait_until(lambda: {w["instance"]: w["state"] for w in client.workers()}.get(name) == "live", 30,
               "the remote worker live")
    (remote_id,) = client.submit_many([{"task": "t", "args": ["far"], "queue": "remote"}])
    (local_id,) = client.submit_many([{"task": "t", "args": ["near"]}])
    done = client.wait(remote_id, 30)
    assert done["state"] == "done" and done["worker"] == name and done["result"] == "t far processed"
    near = client.wait(local_id, 30)
    assert near["state"] == "done" and near["worker"] == "1"
    workers = {w["instance"]: w for w in client.workers()}
    assert workers[name]["machine"] == name.split("@")[1] and workers[name]["transport"] == "amqp"
    assert workers["1"]["transport"] == "posix" and workers[name]["queues"] == ["remote"]
    out = suite.tqctl("workers")
    assert out.returncode == 0 and "MACHINE" in out.stdout and name in out.stdout, out
    assert client.status()["broker"] == {"url": broker.url.replace(":tqpass@", ":***@"), "state": "connected"}
    text = client.metrics_text()
    assert 'tq_workers{state="live",transport="amqp"} 1.0' in text and \
        'tq_workers{state="live",transport="posix"} 1.0' in text
    assert remote.proc.poll() is None
    remote.signal(signal.SIGTERM)  # a routine stop over the broker: Bye, the host's fence, Synced, exit 0
    assert remote.wait(20) == 0
    wait_until(lambda: {w["instance"]: w["state"] for w in client.workers()}.get(name) == "stopped", 20,
               "the remote worker stopped")


def test_a_worker_waits_for_an_unreachable_broker_with_its_unit_up_and_says_so_then_a_refused_login(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    from broker import free_ports
    nobody = f"amqp://tq:{SECRET}@127.0.0.1:{free_ports()}/"
    worker = remote_worker(suite, remote_config(suite, nobody, "m2"), "2", ready=False)
    status = worker.notify.wait_for(lambda m: m.startswith("STATUS=waiting for the broker"), 30)
    assert "connection refused" in status.lower() or "refused" in status.lower(), status
    wait_until(lambda: "retrying in" in worker.text(), 30, "a retry said in the log")
    # READY after CONNECT_WAIT (not on connecting): systemd's start timeout must not kill a worker that waits,
    # and its STATUS goes on saying what it waits for (not "idle").
    ready = worker.notify.wait_for(lambda m: m == "READY=1", 30)
    assert ready and worker.proc.poll() is None
    at = worker.notify.messages.index("READY=1")
    after = [m for m in worker.notify.messages[at:] if m.startswith("STATUS=")]
    assert after and all("waiting for the broker" in m for m in after), after
    bad = broker.url.replace(":tqpass@", f":{SECRET}@")
    refused = remote_worker(suite, remote_config(suite, bad, "m3"), "3", ready=False)
    line = refused.notify.wait_for(lambda m: m.startswith("STATUS=waiting for the broker"), 30)
    assert "refused the login" in line or "ACCESS_REFUSED" in line or "login" in line, line
    wait_until(lambda: "retrying in" in refused.text(), 30, "a retry said in the log")
    for d in (worker, refused):
        assert SECRET not in d.text() and "Traceback" not in d.text()
        assert all(SECRET not in m for m in d.notify.messages)
        assert d.proc.poll() is None


def test_tq_host_with_its_broker_away_serves_this_machine_s_queues_and_says_what_it_waits_for(
        suite: Suite) -> None:
    from broker import free_ports
    suite.write_config(f'[amqp]\nurl = "amqp://tq:{SECRET}@127.0.0.1:{free_ports()}/"\nqueues = ["remote"]\n')
    host = suite.host()
    suite.worker("1")
    suite.wait_live(1)
    client = suite.client()
    (job_id,) = client.submit_many([{"task": "t", "args": ["here"]}])
    assert client.wait(job_id, 30)["state"] == "done"
    (far,) = client.submit_many([{"task": "t", "args": ["far"], "queue": "remote"}])
    assert client.get(far)["state"] == "queued"  # waits for a remote worker, kept by tq-host
    host.notify.wait_for(lambda m: m.startswith("STATUS=") and "waiting for the broker" in m, 30)
    broker_state = client.status()["broker"]  # (said by tqctl status too, where an operator looks first)
    assert broker_state["state"] == "waiting" and "cannot reach the broker" in broker_state["detail"], broker_state
    out = suite.tqctl("status")
    assert out.returncode == 0 and "broker:  waiting for the broker: cannot reach" in out.stdout, out
    assert SECRET not in host.text() and all(SECRET not in m for m in host.notify.messages)
    assert "Traceback" not in host.text() and host.proc.poll() is None


def test_a_job_lost_with_a_worker_s_deleted_inbox_is_found_by_the_fence_and_done_once(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n'
                       '[tasks.rec]\npython = "tq_test_handlers:record"\nqueue = "remote"\nretries = 2\n'
                       'backoff = "100ms"\n')
    suite.host()
    remote = remote_worker(suite, remote_config(suite, broker.url, "m4"), "4")
    client = suite.client()
    name = machine_instance("4")
    wait_until(lambda: {w["instance"]: w["state"] for w in client.workers()}.get(name) == "live", 30,
               "the remote worker live")
    remote.signal(signal.SIGSTOP)  # it takes nothing while its inbox is deleted with the job in it
    try:
        (job_id,) = client.submit_many([{"task": "rec", "args": ["once"]}])
        wait_until(lambda: client.get(job_id)["state"] == "assigned", 10, "the job assigned")
        broker.delete_queue(f"{suite.prefix.lstrip('/')}.w.{name}")
    finally:
        remote.signal(signal.SIGCONT)
    job = client.wait(job_id, 30)
    assert (job["state"], job["attempts"]) == ("done", 2), job
    assert suite.executions() == ["once"]
    events = client.events(job=job_id)
    assert [e["event"] for e in events] == ["submitted", "assigned", "failed", "retrying", "assigned", "done"]
    assert "lost" in str(events[2].get("detail")), events[2]


def test_a_result_lost_with_tq_host_s_deleted_queue_is_found_by_fencing_the_remote_workers(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n'
                       '[tasks.nap]\npython = "tq_test_handlers:hang"\nqueue = "remote"\nretries = 2\n'
                       'backoff = "100ms"\n', lease="30s")
    host = suite.host()
    remote = remote_worker(suite, remote_config(suite, broker.url, "m5"), "5")
    client = suite.client()
    name = machine_instance("5")
    wait_until(lambda: {w["instance"]: w["state"] for w in client.workers()}.get(name) == "live", 30,
               "the remote worker live")
    (job_id,) = client.submit_many([{"task": "nap", "args": ["1"]}])
    wait_until(lambda: client.get(job_id)["state"] == "running", 10, "the job running")
    host_queue = f"{suite.prefix.lstrip('/')}.host"
    host.signal(signal.SIGSTOP)  # the result waits in tq-host's queue, which is then deleted with it
    try:
        wait_until(lambda: f"job {job_id} done" in remote.text(), 10, "the job done on the worker")
        wait_until(lambda: queue_depth(broker, host_queue) >= 1, 10, "the result in tq-host's queue")
        broker.delete_queue(host_queue)
    finally:
        host.signal(signal.SIGCONT)
    job = client.wait(job_id, 30)
    assert (job["state"], job["attempts"], job["worker"]) == ("done", 2, name), job  # run again: at least once
    assert "fenced" in host.text() or "lost" in host.text()


def queue_depth(node: Broker, queue: str) -> int:
    """Messages waiting in a queue on the broker (0 when it does not exist)."""
    out = node.ctl("list_queues", "name", "messages", "--quiet", "--no-table-headers").stdout
    return next((int(n) for q, n in (line.split() for line in out.splitlines() if line.strip()) if q == queue), 0)


def test_a_worker_whose_broker_name_does_not_resolve_yet_waits_and_does_jobs_once_it_does(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n')
    suite.host()
    with hosts_name() as (name, resolve_to):
        url = broker.url.replace("127.0.0.1", name)
        worker = remote_worker(suite, remote_config(suite, url, "m4"), "4", ready=False)
        status = worker.notify.wait_for(lambda m: m.startswith("STATUS=waiting for the broker"), 30)
        assert f"cannot resolve the broker's host in amqp://tq:***@{name}:" in status, status
        worker.notify.wait_for(lambda m: m == "READY=1", 30)  # up, and retrying: not failed at start
        client = suite.client()
        (job_id,) = client.submit_many([{"task": "t", "args": ["far"], "queue": "remote"}])
        resolve_to("127.0.0.1")
        done = client.wait(job_id, 60)
        assert done["state"] == "done" and done["worker"] == machine_instance("4"), done
        assert worker.proc.poll() is None and "Traceback" not in worker.text()


def test_a_queue_a_remote_worker_serves_and_amqp_queues_lacks_is_blamed_on_amqp_queues_on_both_machines(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n')
    host = suite.host()
    remote = remote_worker(suite, remote_config(suite, broker.url, "m1", queues='["remote", "video"]'), "1")
    client = suite.client()
    name = machine_instance("1")
    wait_until(lambda: {w["instance"]: w["state"] for w in client.workers()}.get(name) == "live", 30,
               "the remote worker live")
    # the worker's own journal says which of its queues tq-host will not send it, and where that is decided
    wait_until(lambda: "tq-host will send this worker no jobs of queue(s) video" in remote.text(), 20,
               "the worker's warning")
    assert "tq-host's amqp.queues" in remote.text()
    client.submit_many([{"task": "t", "queue": "video"}])
    line = f"queue video: no live worker serves it; its jobs wait until one does (worker(s) {name} name it, but "
    wait_until(lambda: line in host.text(), 20, "tq-host's warning naming amqp.queues")
    assert "[worker] queues" not in host.text().split(line, 1)[1].splitlines()[0]
    (worker,) = [w for w in client.workers() if w["instance"] == name]
    assert worker["queues"] == ["remote"] and worker["not_sent"] == ["video"]
    assert "remote (not sent: video)" in suite.tqctl("workers").stdout


def test_while_tq_host_has_no_broker_a_remote_worker_s_seen_is_the_time_since_it_was_last_heard(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n')  # a 3 s lease
    suite.host()
    remote_worker(suite, remote_config(suite, broker.url, "m1"), "1")
    client = suite.client()
    name = machine_instance("1")

    def worker() -> dict[str, object]:
        return next((w for w in client.workers() if w["instance"] == name), {})

    wait_until(lambda: worker().get("state") == "live", 30, "the remote worker live")
    broker.stop_app()
    try:
        wait_until(lambda: client.status()["broker"]["state"] == "waiting", 30, "tq-host without its broker")
        # its lease waits for the broker (still live), but nothing was heard from it: SEEN grows past the lease
        # (past 4.1, not 4.0: tqctl shows one decimal and may ask within 50 ms of this look, so 4.04 shows as 4.0)
        wait_until(lambda: float(str(worker()["seen_ago"])) > 4.1, 30, "SEEN past the lease")
        assert worker()["state"] == "live"
        row = next(line for line in suite.tqctl("workers").stdout.splitlines() if line.startswith(name))
        assert float(row.split()[-2].rstrip("s")) > 4.0, row
    finally:
        broker.start_app()
    wait_until(lambda: float(str(worker()["seen_ago"])) < 2.0, 60, "heard again once the broker is back")


def test_a_worker_through_the_broker_removes_its_posix_inbox_left_from_before_the_switch(
        suite: Suite, broker: Broker) -> None:  # noqa: F811
    left = posix_ipc.MessageQueue(f"{suite.prefix}.w.1", posix_ipc.O_CREX, max_messages=2, max_message_size=64)
    left.close()  # as tq-worker@1 leaves it after the package's first start, on the POSIX mailboxes
    suite.write_config(f'[amqp]\nurl = "{broker.url}"\nqueues = ["remote"]\n')
    suite.host()
    remote = remote_worker(suite, remote_config(suite, broker.url, "m1"), "1")
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.unlink_message_queue(f"{suite.prefix}.w.1")
    assert f"removed POSIX mailbox {suite.prefix}.w.1" in remote.text()
