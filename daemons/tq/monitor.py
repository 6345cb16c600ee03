"""A worker's own figures, sent in its heartbeats (protocol.Heartbeat.monitor) and shown by `tqctl workers`.

Sampled once per heartbeat, never per job: a few /proc reads (about 50 µs), plus, while a `command` job runs,
one read of /proc/PID/stat per process visible to the worker to find the job's session (under systemd the
worker has ProtectProc=invisible: it sees only its own user's processes). Every /proc read may fail (a
hardened sandbox, a process ending mid-scan): a figure it cannot read is None, never an error.

The figures and their units (the keys say them):
    rss_bytes        the worker's resident set size
    cpu_seconds      the worker's user + system CPU time (all its threads: a Python job's too)
    cpu_percent      cpu_seconds spent since the previous sample, per second of wall time, x 100 (computed
                     here, where both samples are: the host need not keep the previous one)
    fds              the worker's open file descriptors
    uptime_seconds   since this worker program started (a re-exec after a stuck Python job starts it again)
    jobs_done        attempts this worker ran that ended ok, since it started
    jobs_failed      attempts it ran that failed (error, timeout, cancel while running)
    job              the running attempt, or None: id, task, attempt, elapsed_seconds, and for a command
                     `tree`: the processes of its session (the command and everything it started that did not
                     make a session of its own: what a cancel kills): processes, rss_bytes, cpu_seconds (their
                     user + system time, and that of the children they reaped), cpu_percent.
"""

from __future__ import annotations

import os
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
TASK_SHOWN = 64  # characters of the running job's task name sent: the heartbeat stays small


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size from /proc/PID/statm (its second field, in pages)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def open_fds() -> int | None:
    """Open descriptors of this process (without the one listing them)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


def session_tree(sid: int) -> tuple[int, int, float] | None:
    """(processes, summed RSS bytes, summed CPU seconds) of the live processes in session `sid`; None if
    /proc cannot be listed. A process that ends between the listing and its read is skipped."""
    count, rss, ticks = 0, 0, 0
    try:
        pids = os.listdir("/proc")
    except OSError:
        return None
    for name in pids:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:  # gone, or hidden
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses, so split after the last ")"
        rest = data[data.rfind(b")") + 2:].split()
        try:
            if int(rest[3]) != sid or rest[0] in (b"Z", b"X"):  # a zombie has ended: its CPU is in the reaper's
                continue
            ticks += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])  # utime stime cutime cstime
            rss += int(rest[21]) * PAGE
        except (ValueError, IndexError):
            continue
        count += 1
    return count, rss, ticks / TICK


class Sampler:
    """Builds the monitor dict; keeps the previous CPU samples for the percentages."""

    def __init__(self, now: float) -> None:
        self.started = now  # monotonic
        self.last = (now, self._cpu())
        self.last_tree: tuple[tuple[int, int], float, float] | None = None  # (job, attempt), time, CPU seconds

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def sample(self, now: float, done: int, failed: int, job: dict[str, Any] | None = None,
               session: int | None = None) -> dict[str, Any]:
        """The figures as of `now` (monotonic), with the worker's counts of attempts done and failed. `job`: the
        running attempt's id, task, attempt and elapsed_seconds; `session`: its command's session id (the
        command's pid), whose process tree is added."""
        cpu = self._cpu()
        before, before_cpu = self.last
        self.last = (now, cpu)
        out: dict[str, Any] = {
            "rss_bytes": rss_bytes(), "cpu_seconds": round(cpu, 2), "cpu_percent": _percent(cpu - before_cpu,
                                                                                              now - before),
            "fds": open_fds(), "uptime_seconds": round(now - self.started, 1), "jobs_done": done,
            "jobs_failed": failed, "job": None,
        }
        if job is not None:
            job = dict(job, task=str(job.get("task", ""))[:TASK_SHOWN])
            if session is not None:
                key = (int(job.get("id", 0)), int(job.get("attempt", 0)))
                job["tree"] = self._tree(now, session, key, float(job.get("elapsed_seconds", 0.0)))
            out["job"] = job
        return out

    def _tree(self, now: float, session: int, key: tuple[int, int], elapsed: float) -> dict[str, Any] | None:
        found = session_tree(session)
        if found is None:
            self.last_tree = None
            return None
        count, rss, cpu = found
        if self.last_tree is not None and self.last_tree[0] == key:
            percent = _percent(cpu - self.last_tree[2], now - self.last_tree[1])
        else:  # the attempt's first sample: over its whole run so far
            percent = _percent(cpu, elapsed)
        self.last_tree = (key, now, cpu)
        return {"processes": count, "rss_bytes": rss, "cpu_seconds": round(cpu, 2), "cpu_percent": percent}


def _percent(cpu: float, wall: float) -> float | None:
    return round(max(cpu, 0.0) / wall * 100, 1) if wall > 0.001 else None
