"""SIGHUP reloads every key of the configuration: each one either takes effect or is reported as needing a
restart. The test walks every field of the configuration's dataclasses, so that a key added later without a
reload path fails here. tq-host runs in-process (real signal, real queue, socket and store); the worker test
runs a real tq-host process and a worker in-process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import Suite, wait_until
from tq import config, configload
from tq.host import Host
from tq.host.server import Conn
from tq.worker import Worker

RESTART = "restart"
SECTIONS = {"host": config.HostConfig, "mqueue": config.MqueueConfig, "worker": config.WorkerConfig,
            "log": config.LogConfig, "access": config.AccessConfig}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _reload(daemon: Host | Worker, step: Callable[[], None]) -> None:
    os.kill(os.getpid(), signal.SIGHUP)  # a real signal: the handler sets the flag, the step reloads
    wait_until(lambda: (step(), not daemon.reload_requested)[1], 10, "the reload")


def _submitted(host: Host, task: str) -> Any:
    """A job of `task` as the host builds it from its configuration (submitted through the operations)."""
    a, b = socket.socketpair()
    request = {"op": "submit", "rid": 1, "jobs": [{"task": task}]}
    host.parts.requests.handle(Conn(a, os.getuid()), json.dumps(request).encode())
    (reply,) = [r for _, r in host.ledger.take()]
    a.close()
    b.close()
    assert reply["ok"], reply
    return host.jobs.find(reply["ids"][0])


# Every key, the TOML that changes it, and how its effect shows in the running host (RESTART: the running value
# stays and the log names the key). `{d}` is the suite's directory.
HOST_KEYS: dict[str, tuple[str, Any]] = {
    "host.state_dir": ('[host]\nstate_dir = "{d}/elsewhere"', RESTART),
    "host.socket": ('[host]\nsocket = "{d}/other.sock"', RESTART),
    "host.durability": ('[host]\ndurability = "normal"',
                        lambda h: h.store.db.execute("PRAGMA synchronous").fetchone()[0] == 1),  # NORMAL
    "host.lease": ('[host]\nlease = "7s"', lambda h: h.fleet.cfg.host.lease == 7),
    "host.forget_lost": ('[host]\nforget_lost = "2h"', lambda h: h.fleet.cfg.host.forget_lost == 7200),
    "host.retain_age": ('[host]\nretain_age = "2d"', lambda h: h.parts.upkeep.cfg.host.retain_age == 2 * 86400),
    "host.retain_count": ('[host]\nretain_count = 5', lambda h: h.parts.upkeep.cfg.host.retain_count == 5),
    "mqueue.prefix": ('[mqueue]\nprefix = "/tqt-other"', RESTART),
    "mqueue.max_message_size": ("[mqueue]\nmax_message_size = 4096", RESTART),
    "mqueue.max_messages": ("[mqueue]\nmax_messages = 3", RESTART),
    # The host does not use [worker]: it takes effect in the workers (test below).
    "worker.queues": ('[worker]\nqueues = ["q2"]', lambda h: h.cfg.worker.queues == ("q2",)),
    "worker.heartbeat": ('[worker]\nheartbeat = "2s"', lambda h: h.cfg.worker.heartbeat == 2),
    "worker.prefetch": ("[worker]\nprefetch = 2", lambda h: h.cfg.worker.prefetch == 2),
    "worker.stop_timeout": ('[worker]\nstop_timeout = "9s"', lambda h: h.cfg.worker.stop_timeout == 9),
    "log.level": ('[log]\nlevel = "debug"', lambda h: logging.getLogger().level == logging.DEBUG),
    "log.job_events": ('[log]\njob_events = "failures"', lambda h: h.events.mode == "failures"),
    "log.job_events_per_second": ("[log]\njob_events_per_second = 7", lambda h: h.events.per_second == 7),
    "tasks.name": ('[tasks.fresh]\nqueue = "q9"', lambda h: _submitted(h, "fresh").queue == "q9"),
    "tasks.handler": ('[tasks.t]\npython = "m:f"', lambda h: h.cfg.task_for("t").handler == "python"),
    "tasks.command": ('[tasks.t]\ncommand = ["true"]', lambda h: h.cfg.task_for("t").command == ("true",)),
    "tasks.python": ('[tasks.t]\npython = "m:f"', lambda h: h.cfg.task_for("t").python == "m:f"),
    "tasks.queue": ('[tasks.t]\nqueue = "q3"', lambda h: _submitted(h, "t").queue == "q3"),
    "tasks.timeout": ('[tasks.t]\ntimeout = "3s"', lambda h: _submitted(h, "t").timeout == 3),
    "tasks.retries": ("[tasks.t]\nretries = 9", lambda h: _submitted(h, "t").retries == 9),
    "tasks.priority": ("[tasks.t]\npriority = 4", lambda h: _submitted(h, "t").priority == 4),
    "tasks.backoff": ('[tasks.t]\nbackoff = "4s"', lambda h: _submitted(h, "t").backoff == 4),
    "tasks.backoff_max": ('[tasks.t]\nbackoff_max = "1h"', lambda h: _submitted(h, "t").backoff_max == 3600),
    "tasks.kill_grace": ('[tasks.t]\nkill_grace = "2s"', lambda h: _submitted(h, "t").handler_json == (
        '{"handler":"echo","kill_grace":2.0}')),
    "tasks.memory_max": ('[tasks.t]\ncommand = ["true"]\nmemory_max = "64M"',
                         lambda h: '"memory_max":67108864' in _submitted(h, "t").handler_json),
    "tasks.cpu_max": ('[tasks.t]\ncommand = ["true"]\ncpu_max = "2s"',
                      lambda h: '"cpu_max":2' in _submitted(h, "t").handler_json),
    "tasks.open_files_max": ('[tasks.t]\ncommand = ["true"]\nopen_files_max = 32',
                             lambda h: '"open_files_max":32' in _submitted(h, "t").handler_json),
    "tasks.on_success": ('[tasks.t]\non_success = "notify"\n[tasks.notify]',  # a follow-up's task needs a route
                         lambda h: h.cfg.task_for("t").on_success == "notify" and h.parts.admission.follow_ups),
    "tasks.on_failure": ('[tasks.t]\non_failure = "alert"\n[tasks.alert]',
                         lambda h: h.cfg.task_for("t").on_failure == "alert"),
    "tasks.unique": ("[tasks.t]\nunique = true", lambda h: _submitted(h, "t").unique_key == "t []"),
    "access.admins": ('[access]\nadmins = ["wheel"]',
                      lambda h: h.parts.requests.access.cfg.access.admins == ("wheel",)),
    "access.gateways": ('[access]\ngateways = ["nobody"]',
                        lambda h: h.parts.requests.access.cfg.access.gateways == ("nobody",)),
    # tq-host does not use [gateway] (tq-gateway reads it, and reloads it on SIGHUP: test_gateway.py)
    "gateway": ('[gateway]\nmax_wait = "1m"', lambda h: h.cfg.gateway.max_wait == 60),
    # The broker connection is made at start: a changed [amqp] or [transport] waits for the next one.
    "amqp": ('[amqp]\nurl = "amqp://tq:pw@127.0.0.1:5672/"\nqueues = ["far"]\nheartbeat = "5s"\nwindow = 10', RESTART),
    "transport": ('[transport]\nkind = "amqp"\nurl = "amqp://tq:pw@127.0.0.1:5672/"', RESTART),
    "queues": ('[queues.mail]\nsubmit = ["alice"]',
               lambda h: h.parts.requests.access.cfg.queues["mail"].submit == ("alice",)),
    "queues.concurrency": ("[queues.mail]\nconcurrency = 2", lambda h: h.parts.queues.limited["mail"].concurrency == 2),
    "queues.rate": ('[queues.mail]\nrate = "30/m"', lambda h: h.parts.queues.limited["mail"].rate == 0.5),
    "exchanges": ('[exchanges.orders]\ntype = "topic"\nbindings = [{{ queue = "audit", key = "orders.#" }}]',
                  lambda h: h.cfg.exchanges["orders"].route("orders.created") == ["audit"]),
    "schedules": ('[schedules.nightly]\ncron = "@daily"\ntask = "t"',
                  lambda h: h.parts.scheduler.next["nightly"] > time.time()),
    "files": ("[log]\nlevel = \"info\"", lambda h: any(f.endswith("50-change.toml") for f in h.cfg.files)),
    "worker_overrides": ('[worker.7]\nqueues = ["seven"]', lambda h: h.cfg.worker_for("7").queues == ("seven",)),
    "warnings": ('[access]\nadmins = ["tqt-nosuch-group"]',  # logged: the test below
                 lambda h: any("no group 'tqt-nosuch-group'" in w for w in h.cfg.warnings)),
}


def test_every_configuration_field_has_a_reload_case() -> None:
    fields = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    fields |= {f"tasks.{f.name}" for f in dataclasses.fields(config.TaskConfig)}
    fields |= {f.name for f in dataclasses.fields(config.Config) if f.init and f.name not in SECTIONS | {"tasks": 1}}
    fields |= {f"queues.{f.name}" for f in dataclasses.fields(config.QueueConfig) if f.name not in ("name", "submit")}
    assert fields == set(HOST_KEYS)


def _base(suite: Suite) -> str:
    return (f'[host]\nstate_dir = "{suite.dir}/state"\nsocket = "{suite.dir}/tq.sock"\n'
            f'[mqueue]\nprefix = "{suite.prefix}"\nmax_messages = 4\n[tasks.t]\nqueue = "default"\n')


def _change(suite: Suite, toml: str) -> None:
    """A drop-in that overrides the main file's keys, as an operator would write one."""
    (suite.dir / "tq.d").mkdir(exist_ok=True)
    (suite.dir / "tq.d" / "50-change.toml").write_text(toml + "\n")


@pytest.mark.parametrize("key", sorted(HOST_KEYS))
def test_a_reloaded_key_takes_effect_or_is_reported_as_needing_a_restart(suite: Suite, signals: None,
                                                                         key: str) -> None:
    change, effect = HOST_KEYS[key]
    with _reloaded_host(suite, change.format(d=suite.dir)) as (host, before, records):
        assert any(line.startswith("configuration reloaded") for line in records.lines), records.lines
        if effect == RESTART:
            section, _, name = key.partition(".")
            now, then = getattr(host.cfg, section), getattr(before, section)
            assert (getattr(now, name) == getattr(then, name)) if name else now == then
            assert any(key in line and "takes effect at the next restart" in line for line in records.lines)
        else:
            assert effect(host), f"{key} did not take effect on reload"
            assert not any("next restart" in line for line in records.lines), records.lines


@contextlib.contextmanager
def _reloaded_host(suite: Suite, change: str) -> Iterator[tuple[Host, config.Config, Records]]:
    """An in-process tq-host started on _base, then reloaded with the drop-in `change`: the host, its
    configuration before the reload, and what it logged."""
    suite.config.write_text(_base(suite))
    host = Host(configload.load(str(suite.config)), str(suite.config))
    records = Records()
    host.start()
    try:
        logging.getLogger().addHandler(records)
        before = host.cfg
        _change(suite, change)
        _reload(host, lambda: host.step(max_wait=0.05))
        yield host, before, records
    finally:
        logging.getLogger().removeHandler(records)
        host.shutdown()


@pytest.mark.parametrize(("change", "key"), [
    ('[schedules.nightly]\ncron = "@daily"\ntask = "nosuch"', "schedules.nightly.task"),
    ('[tasks.t]\non_failure = "nosuch"', "tasks.t.on_failure"),
])
def test_a_reload_naming_a_task_no_route_matches_is_refused_and_the_running_configuration_stays(
        suite: Suite, signals: None, change: str, key: str) -> None:
    with _reloaded_host(suite, change) as (host, before, records):
        dropin = suite.dir / "tq.d" / "50-change.toml"
        assert any(line.startswith(f"reload refused, keeping the running configuration: {dropin}: {key}: no "
                                   "[tasks.*] table matches task 'nosuch'") for line in records.lines), records.lines
        assert host.cfg is before and host.parts.scheduler.next == {}


def test_a_reload_with_a_cron_expression_that_never_fires_is_refused_and_the_host_carries_on(
        suite: Suite, signals: None) -> None:
    with _reloaded_host(suite, '[schedules.feb]\ncron = "0 0 31 2,4,6 *"\ntask = "t"') as (host, before, records):
        dropin = suite.dir / "tq.d" / "50-change.toml"
        assert any(line.startswith(f"reload refused, keeping the running configuration: {dropin}: "
                                   "schedules.feb.cron: never fires") for line in records.lines), records.lines
        assert host.cfg is before and host.parts.scheduler.next == {}
        host.step(max_wait=0.05)  # and it carries on


def test_tq_host_logs_each_configuration_warning_at_its_start_and_at_each_reload(suite: Suite) -> None:
    suite.write_config('\n[access]\nadmins = ["tqt-nosuch-group"]\n')
    host = suite.host()  # (ready: the warnings come before READY=1)
    admins = f"configuration warning: {suite.config}: access.admins: no group 'tqt-nosuch-group' on this system"
    assert host.text().count(admins) == 1, host.text()
    _change(suite, '[queues.mail]\nsubmit = ["tqt-alcie"]')
    host.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in host.text(), 10, "the reload")
    text = host.text()
    assert text.count(admins) == 2 and text.count(
        f"configuration warning: {suite.dir}/tq.d/50-change.toml: queues.mail.submit: no user 'tqt-alcie'") == 1, text


def test_tqctl_status_says_a_reload_was_refused_until_one_succeeds_and_which_queues_are_paused(suite: Suite) -> None:
    host = suite.host()
    status = suite.tqctl("status").stdout
    assert "reload refused" not in status and "paused" not in status, status
    _change(suite, "[queues.mail]\nrate = 0")
    host.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in host.text(), 10, "the refused reload")
    dropin = suite.dir / "tq.d" / "50-change.toml"
    assert suite.tqctl("pause", "default").returncode == 0
    lines = suite.tqctl("status").stdout.splitlines()
    assert f"reload refused: {dropin}: queues.mail.rate: " in "\n".join(lines), lines
    assert "paused:  default" in lines, lines
    host.notify.wait_for(lambda m: m.startswith("STATUS=") and "; paused: default; reload refused: " in m)
    st = json.loads(suite.tqctl("status", "--json").stdout)
    assert st["reload_refused"].startswith(f"{dropin}: queues.mail.rate: ") and st["paused"] == ["default"], st
    _change(suite, '[queues.mail]\nrate = "1/s"')
    host.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in host.text(), 10, "the reload")
    assert suite.tqctl("resume", "default").returncode == 0
    assert json.loads(suite.tqctl("status", "--json").stdout)["reload_refused"] is None
    status = suite.tqctl("status").stdout
    assert "reload refused" not in status and "paused" not in status, status


def _seen_by_host(worker: Worker, client: Any, key: str, value: object) -> bool:
    """The worker's new setting reached tq-host (its hello, then the fence the worker answers)."""
    def seen() -> bool:
        worker.step()
        w = client.workers()[0]
        return bool(w[key] == value and w["state"] == "live")
    return bool(wait_until(seen, 10, f"the host to see {key} = {value!r}"))


WORKER_KEYS: dict[str, tuple[str, Any]] = {
    "worker.queues": ('[worker]\nqueues = ["q2"]', lambda w, c: _seen_by_host(w, c, "queues", ["q2"])),
    "worker.heartbeat": ('[worker]\nheartbeat = "2s"', lambda w, c: w.wcfg.heartbeat == 2),
    "worker.prefetch": ("[worker]\nprefetch = 2", lambda w, c: _seen_by_host(w, c, "prefetch", 2)),
    "worker.stop_timeout": ('[worker]\nstop_timeout = "9s"', lambda w, c: w.wcfg.stop_timeout == 9),
    "worker.prefetch grows": ("[worker]\nprefetch = 20", RESTART),  # the inbox's depth is fixed at creation
    "mqueue.max_message_size": ("[mqueue]\nmax_message_size = 4096", RESTART),
    "log.job_events": ('[log]\njob_events = "none"', lambda w, c: w.events.mode == "none"),
    "worker_overrides": ('[worker.1]\nheartbeat = "3s"', lambda w, c: w.wcfg.heartbeat == 3),
}


@pytest.mark.parametrize("key", sorted(WORKER_KEYS))
def test_a_worker_reload_takes_effect_or_is_reported_as_needing_a_restart(suite: Suite, signals: None,
                                                                          key: str) -> None:
    base = _base(suite) + "[worker]\nprefetch = 4\n"
    suite.config.write_text(base)
    suite.host()
    worker = Worker(configload.load(str(suite.config)), str(suite.config), "1")
    records = Records()
    try:
        worker.start()
        logging.getLogger().addHandler(records)
        client = suite.client()
        wait_until(lambda: (worker.step(), client.workers()[0]["state"] == "live")[1], 10, "the worker live")
        change, effect = WORKER_KEYS[key]
        _change(suite, change)
        _reload(worker, worker.step)
        assert any(line.startswith("configuration reloaded") for line in records.lines), records.lines
        if effect == RESTART:
            name = key.split()[0]
            assert any(name in line and "next restart" in line for line in records.lines), records.lines
            assert worker.wcfg.prefetch == 4  # the running values stay
            assert worker.cfg.mqueue == config.MqueueConfig(prefix=suite.prefix, max_messages=4)
        else:
            assert effect(worker, client), f"{key} did not take effect on reload"
    finally:
        logging.getLogger().removeHandler(records)
        for mailbox in (worker.inbox, worker.host_mailbox.held):
            if mailbox is not None:
                mailbox.close()
