"""Celery's side of bench/amqp.py, run by /usr/bin/python3 (Debian's python3-celery 5.2.6; the venv has no
Celery): the app (prefork pool, acks_late, persistent messages, publisher confirms, rpc:// results), and the
producer that bench/amqp.py times.

    TQ_BENCH_CELERY_URL=amqp://tq:tqpass@HOST:PORT// /usr/bin/python3 -m celery -A bench_celery worker ...
    TQ_BENCH_CELERY_URL=... /usr/bin/python3 bench_celery.py N     # one JSON line: the run's figures

The producer sends N no-op tasks one after the other (each send waits for the broker's confirm, as
confirm_publish asks) and waits for every result (ResultSet.join_native): submit N, wait until all done.
"""

import json
import os
import sys
import time

from celery import Celery
from celery.result import ResultSet

app = Celery("tqbench", broker=os.environ["TQ_BENCH_CELERY_URL"], backend="rpc://")
app.conf.update(
    task_acks_late=True,  # the message is acknowledged after the task ran (Celery's at-least-once mode)
    task_default_delivery_mode="persistent",
    broker_transport_options={"confirm_publish": True},  # a send waits for the broker's confirm
    task_serializer="json", result_serializer="json", accept_content=["json"],
    result_persistent=False, worker_hijack_root_logger=False, worker_prefetch_multiplier=4,
)


@app.task(name="tqbench.noop")  # one name whether this module is imported (worker) or run (producer)
def noop() -> None:
    return None


def produce(n: int) -> dict[str, float]:
    noop.delay().get(timeout=60)  # warm: the worker is up and consuming, the result queue declared
    t0 = time.monotonic()
    results = ResultSet([noop.delay() for _ in range(n)])
    sent = time.monotonic()
    results.join_native(timeout=600)
    done = time.monotonic()
    return {"jobs": n, "seconds": round(done - t0, 3), "jobs_per_s": round(n / (done - t0)),
            "submit_phase_s": round(sent - t0, 3)}


if __name__ == "__main__":
    print(json.dumps(produce(int(sys.argv[1]))))
