"""Task handlers: the built-in echo, an argv command, a Python callable.

A handler runs as an Execution that the worker's main loop polls, so a long
job never stops the loop from pinging the watchdog or sending heartbeats.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import job as tqjob
from ..protocol import Job

OUTPUT_LIMIT = 1 << 20  # bytes kept of a command's stdout/stderr; the rest is counted, not kept


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str = ""
    error: str = ""


class Execution:
    """A running attempt. `fds` are watched by the worker; `poll()` returns the Outcome once done."""

    killable = True

    @property
    def fds(self) -> list[int]:
        return []

    @property
    def group(self) -> int:
        """The process group a command leads (its pid), stopped once the attempt ended (leftovers.py); 0: none."""
        return 0

    def poll(self) -> Outcome | None:
        raise NotImplementedError

    def terminate(self) -> None:
        """Ask the attempt to stop: SIGTERM to a command's process group, the cancelled flag of a Python job."""

    def kill(self) -> None:
        """Stop the attempt now (its process group for a command)."""

    def close(self) -> None:
        """Release descriptors; the worker calls this after it stopped watching `fds`."""

    def usage(self) -> dict[str, Any]:
        """What the attempt cost, once it ended: `user` and `sys` CPU seconds, `max_rss_kb`, and a command's
        `exit` status or the `signal` that killed it (each only where known)."""
        return {}


class Done(Execution):
    """An attempt that finished as it started (echo, or a failure to start)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def poll(self) -> Outcome:
        return self.outcome


def echo(task: str, args: list[Any]) -> str:
    """The seed behaviour: `task-1` gives `task-1 processed`."""
    return " ".join([task, *(a if isinstance(a, str) else json.dumps(a) for a in args)]) + " processed"


def payload_text(payload: Any) -> str | None:
    if payload is None:
        return None
    return payload if isinstance(payload, str) else json.dumps(payload)


# RLIMIT_* set by util-linux's prlimit, which execs the command: no code runs in the forked child (a
# preexec_fn is unsafe while a Python handler's thread may hold a lock).
LIMITS = {"memory_max": "--as", "cpu_max": "--cpu", "open_files_max": "--nofile"}
LIMIT_SIGNALS = {"cpu_max": ("SIGXCPU", "SIGKILL")}  # what the kernel sends past RLIMIT_CPU (soft, then hard)
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")


class Command(Execution):
    """argv + job args; payload on stdin; stdout is the result; the exit status is the outcome."""

    def __init__(self, argv: list[str], job: Job, env: dict[str, str], limits: dict[str, int]) -> None:
        self.limits = limits
        if limits:
            argv = ["prlimit", *(f"{LIMITS[k]}={v}" for k, v in limits.items()), "--", *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, env=env)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        text = payload_text(job.payload)
        try:
            if text is not None:
                self.proc.stdin.write(text.encode())  # bounded by the message size, below a pipe's buffer
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.pipes = {self.proc.stdout.fileno(): bytearray(), self.proc.stderr.fileno(): bytearray()}
        self.lost = {fd: 0 for fd in self.pipes}
        self.open = set(self.pipes)
        for fd in self.pipes:
            os.set_blocking(fd, False)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.rusage: Any = None  # resource.struct_rusage once reaped (os.wait4)

    @property
    def fds(self) -> list[int]:
        return [*self.open, self.pidfd] if self.proc.returncode is None else list(self.open)

    @property
    def group(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for fd in list(self.open):
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    self.open.discard(fd)
                    break
                kept = chunk[: max(0, OUTPUT_LIMIT - len(self.pipes[fd]))]
                self.pipes[fd] += kept
                self.lost[fd] += len(chunk) - len(kept)

    def _reap(self, block: bool) -> int | None:
        """The exit code (negative: the signal) once the process ended, reaping it with its resource usage."""
        if self.proc.returncode is None:
            try:
                pid, status, self.rusage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return self.proc.poll()
            if pid == 0:
                return None
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode

    def poll(self) -> Outcome | None:
        self._read()
        rc = self._reap(block=False)
        if rc is None:
            return None
        self._read()  # what was written before exit; a grandchild holding the pipe does not keep us waiting
        out, err = (self._text(fd) for fd in self.pipes)
        if rc == 0:
            return Outcome(True, out.removesuffix("\n"))
        why = self._limit_hit(rc, err) or (f"exit status {rc}" if rc > 0 else
                                           f"killed by signal {signal.Signals(-rc).name}")
        tail = err.strip()[-2000:]
        return Outcome(False, out, f"{why}: {tail}" if tail else why)

    def _limit_hit(self, rc: int, err: str) -> str | None:
        """`killed: cpu_max 2s exceeded` where the way the command ended shows it ran into a limit."""
        if "cpu_max" in self.limits and rc < 0 and signal.Signals(-rc).name in LIMIT_SIGNALS["cpu_max"]:
            return f"killed: cpu_max {self.limits['cpu_max']}s exceeded"
        if "memory_max" in self.limits and (any(s in err for s in OUT_OF_MEMORY) or rc in (-6, -9, -11)):
            return f"killed: memory_max {_size(self.limits['memory_max'])} exceeded"
        if "open_files_max" in self.limits and "Too many open files" in err:
            return f"failed: open_files_max {self.limits['open_files_max']} reached"
        return None

    def _text(self, fd: int) -> str:
        text = self.pipes[fd].decode(errors="replace")
        return text + (f"\n[{self.lost[fd]} more bytes not kept]" if self.lost[fd] else "")

    def close(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        try:
            os.close(self.pidfd)
        except OSError:
            pass
        self.open.clear()

    def terminate(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(block=True)

    def usage(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rusage is not None:
            out = {"user": round(self.rusage.ru_utime, 6), "sys": round(self.rusage.ru_stime, 6),
                   "max_rss_kb": self.rusage.ru_maxrss}
        rc = self.proc.returncode
        if rc is not None:
            out["exit" if rc >= 0 else "signal"] = rc if rc >= 0 else signal.Signals(-rc).name
        return out


class Python(Execution):
    """`module:function` called as function(*args[, payload=...]) in a thread.

    A thread cannot be killed: on timeout the worker reports the failure and
    re-executes itself.
    """

    killable = False

    def __init__(self, func: Callable[..., Any], job: Job) -> None:
        self.outcome: Outcome | None = None
        self._usage: dict[str, Any] = {}
        self._r, self._w = os.pipe()
        self.context = tqjob.JobContext(job.id, job.task, job.attempt)
        kwargs = {} if job.payload is None else {"payload": job.payload}
        self.thread = threading.Thread(target=self._run, args=(func, job.args, kwargs), daemon=True,
                                       name=f"job-{job.id}")
        self.thread.start()

    def _run(self, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        before = resource.getrusage(resource.RUSAGE_THREAD)
        tqjob._enter(self.context)
        try:
            value = func(*args, **kwargs)
            text = value if isinstance(value, str) else "" if value is None else json.dumps(value, default=str)
            self.outcome = Outcome(True, text)
        except BaseException as e:
            self.outcome = Outcome(False, "", f"{type(e).__name__}: {e}")
        after = resource.getrusage(resource.RUSAGE_THREAD)
        self._usage = {"user": round(after.ru_utime - before.ru_utime, 6),
                       "sys": round(after.ru_stime - before.ru_stime, 6)}
        os.write(self._w, b"x")

    @property
    def fds(self) -> list[int]:
        return [self._r] if self.outcome is None else []

    def poll(self) -> Outcome | None:
        return self.outcome

    def usage(self) -> dict[str, Any]:
        return self._usage

    def terminate(self) -> None:
        self.context._stop.set()

    def close(self) -> None:
        if self.outcome is None:
            return  # the thread still runs (timed out); it writes to the pipe when it ends
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


_imported: dict[str, Callable[..., Any]] = {}


def resolve(spec: str) -> Callable[..., Any]:
    """Import `module:function` (once)."""
    if spec not in _imported:
        module, _, name = spec.partition(":")
        func = getattr(importlib.import_module(module), name)
        if not callable(func):
            raise TypeError(f"{spec} is not callable")
        _imported[spec] = func
    return _imported[spec]


def start(spec: dict[str, Any], job: Job, env: dict[str, str]) -> Execution:
    """Begin an attempt of `job` with the handler tq-host resolved for it (config.TaskConfig.handler_spec)."""
    kind = spec.get("handler")
    if kind == "echo":
        return Done(Outcome(True, echo(job.task, job.args)))
    if kind == "command":
        command = spec.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            return Done(Outcome(False, "", f"malformed command in the job's handler: {command!r}"))
        argv = [*command, *(a if isinstance(a, str) else json.dumps(a) for a in job.args)]
        limits = {k: v for k, v in spec.items() if k in LIMITS and isinstance(v, int) and not isinstance(v, bool)}
        try:
            return Command(argv, job, env, limits)
        except OSError as e:
            return Done(Outcome(False, "", f"cannot run {argv[0]}: {e.strerror or e}"))
    if kind == "python" and isinstance(spec.get("python"), str):
        target: str = spec["python"]
        try:
            return Python(resolve(target), job)
        except Exception as e:
            return Done(Outcome(False, "", f"cannot load {target}: {type(e).__name__}: {e}"))
    if kind == "missing":
        return Done(Outcome(False, "", f"task {job.task!r} is not in tq-host's configuration any more"))
    return Done(Outcome(False, "", f"unknown handler in the job: {spec!r}"))


def _size(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"
