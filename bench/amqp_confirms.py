"""The AMQP transport's own rate: confirmed sends per second through AmqpMailboxes on one selector loop (as
tq-host dispatches to a remote worker's inbox), and deliveries taken (acknowledged) per second by the worker's side.

    python bench/amqp_confirms.py [--messages 20000] [--rounds 3] [--windows 64,1000]

It starts its own RabbitMQ (tests/broker.py: a plain process on a free loopback port, stopped at the end).
Messages are 200 bytes, persistent, to a durable classic queue with x-max-priority, each confirmed by the
broker; the figure is the median of the rounds, with this process's CPU per message.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from broker import Broker
from tq import configload
from tq.transport.amqp import AmqpMailboxes
from tq.transport.amqploop import AmqpLoop

BODY = b"j" * 200


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(url: str, window: int, messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tq.toml"
        path.write_text(f'[mqueue]\nprefix = "/tqb-{uuid.uuid4().hex[:8]}"\n[amqp]\nurl = "{url}"\nwindow = {window}\n')
        cfg = configload.load(str(path))
    assert cfg.amqp.url is not None
    sel = selectors.DefaultSelector()
    loop = AmqpLoop(sel)
    host = AmqpMailboxes(cfg, cfg.amqp.url, loop, connection_name="bench-host")
    worker = AmqpMailboxes(cfg, cfg.amqp.url, loop, connection_name="bench-worker")
    to_worker = host.open_inbox("bench")
    while not host.ready:
        loop.step(0.1)
    sent, t0, c0 = 0, time.perf_counter(), cpu()
    while sent < messages or host.session.unconfirmed or host.session.resend:
        while sent < messages and to_worker.send(BODY, 1000):
            sent += 1
        loop.step(0.1)
    send_s, send_cpu = time.perf_counter() - t0, cpu() - c0
    inbox = worker.create_inbox("bench", 256)
    taken, t0, c0 = 0, time.perf_counter(), cpu()
    while taken < messages:
        while inbox.receive() is not None:
            taken += 1
        loop.step(0.1)
    take_s, take_cpu = time.perf_counter() - t0, cpu() - c0
    for mailboxes in (host, worker):
        mailboxes.close()
    while host.session.conn is not None or worker.session.conn is not None:
        loop.step(0.1)
    sel.close()
    return {"confirmed_per_s": messages / send_s, "send_cpu_us": 1e6 * send_cpu / messages,
            "taken_per_s": messages / take_s, "take_cpu_us": 1e6 * take_cpu / messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", default="64,1000")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout's TERM still stops the broker (its `with`)
    with Broker() as broker:
        for window in (int(w) for w in args.windows.split(",")):
            rounds = [one_round(broker.url, window, args.messages) for _ in range(args.rounds)]
            median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            print(json.dumps({"window": window, "messages": args.messages, "rounds": args.rounds,
                              **{k: round(v, 1) for k, v in median.items()}}))
            print(f"window {window:5}: {median['confirmed_per_s']:8.0f} confirmed sends/s "
                  f"({median['send_cpu_us']:.0f} us CPU each), {median['taken_per_s']:8.0f} taken/s "
                  f"({median['take_cpu_us']:.0f} us CPU each)", file=sys.stderr)


if __name__ == "__main__":
    main()
