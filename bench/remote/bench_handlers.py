"""The Python handlers that bench/amqp.py's remote workers run (bench/remote is on their PYTHONPATH): a job of
`ms` milliseconds that waits (a sleep: the worker's thread holds no CPU, as a job waiting on I/O), and a no-op."""

from __future__ import annotations

import time


def work(ms: str = "10") -> str:
    time.sleep(float(ms) / 1000)
    return "ok"


def noop() -> None:
    return None
