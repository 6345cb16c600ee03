"""Python task handlers used by the tests (`python = "tq_test_handlers:record"`)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any


def _log(line: str) -> None:
    fd = os.open(os.path.join(os.environ["TQ_TEST_DIR"], "executions.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def record(tag: str, payload: Any = None) -> str:
    """Record one execution and return the tag."""
    _log(str(tag))
    return f"recorded {tag}"


def record_pid(tag: str, seconds: str = "0", payload: Any = None) -> str:
    """Work for `seconds`, then record one execution as "TAG PID": the worker process that ran it (a Python
    handler runs in its thread)."""
    time.sleep(float(seconds))
    _log(f"{tag} {os.getpid()}")
    return f"recorded {tag}"


def work(tag: str, seconds: str = "0") -> str:
    """Work for `seconds`, then record one execution as "TAG HOSTNAME" (the machine that finished it)."""
    time.sleep(float(seconds))
    _log(f"{tag} {socket.gethostname()}")
    return f"worked {tag}"


def fail(message: str) -> None:
    raise RuntimeError(message)


def hang(seconds: str) -> str:
    time.sleep(float(seconds))
    return "woke"


def patient(seconds: str) -> str:
    """Work until asked to stop (tqctl cancel or the timeout), then clean up and return."""
    from tq import job

    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        if job.current().sleep(0.05):
            _log(f"stopped {job.current().id}")
            return "stopped early"
    return "finished"
