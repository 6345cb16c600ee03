"""What tq-host knows of one worker instance (WorkerState), and how `tqctl workers` shows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..transport import Mailbox
from ..transport.machines import machine_instance, machine_of

THIS_MACHINE = machine_instance("").lstrip("@")  # tq-host's machine: its workers on the POSIX queues run here


@dataclass
class WorkerState:
    """What the host knows of one worker instance."""

    instance: str
    pid: int = 0
    queues: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)  # queues its hello names whose jobs tq-host does not send it
    prefetch: int = 1
    state: str = "syncing"  # syncing | live | leaving | lost | stopped
    seen: float = 0.0  # monotonic time its lease runs from: its last message (or tq-host's start, its broker link)
    heard: float = 0.0  # monotonic time of the last message from it (0: none since tq-host started), for display
    inbox: Mailbox | None = None
    assigned: set[int] = field(default_factory=set)
    token: int = 0
    sync_due: bool = False
    fence_cause: str = ""  # why it was fenced: the cause given to the jobs the fence finds lost
    cancels_due: set[tuple[int, int]] = field(default_factory=set)  # (job, attempt) to cancel; the inbox was full
    running: int = 0
    done: int = 0
    saved: tuple[int, tuple[str, ...], str] | None = None  # the row last written to the store
    blocked_until: float = 0.0  # its inbox was full: no dispatch to it before this (monotonic)
    monitor: dict[str, Any] = field(default_factory=dict)  # its figures in its last heartbeat (monitor.py)
    monitor_at: float = 0.0  # monotonic time that heartbeat came
    lost_at: float = 0.0  # when it was lost (seconds since the epoch; kept across host restarts): host.forget_lost
    machine: str = ""  # the machine id its process said it runs on ("": not said yet, or a worker from before)
    refused: tuple[int, str] = (0, "")  # the last process of another machine refused under its name (pid, machine)

    def public(self, now: float, lease: float) -> dict[str, Any]:
        """What `tqctl workers` shows. `seen_ago`: since its last message (None: none since tq-host started), not
        since its lease last started again (a broker outage or a tq-host restart starts it without a word)."""
        machine = machine_of(self.instance)
        return {"instance": self.instance, "machine": machine or THIS_MACHINE,
                "transport": "posix" if machine is None else "amqp", "pid": self.pid, "state": self.state,
                "queues": self.queues, "not_sent": self.not_sent,
                "prefetch": self.prefetch, "assigned": sorted(self.assigned), "running": self.running or None,
                "done": self.done, "seen_ago": round(now - self.heard, 3) if self.heard else None,
                "monitor": self.monitor_view(now, lease)}

    def monitor_view(self, now: float, lease: float) -> dict[str, Any] | None:
        """The figures of the last heartbeat (None: a worker from before they were sent), `sampled_ago` seconds
        old. Of a worker still there and heard within `lease`, uptime and the running job's elapsed time are
        brought forward to now (as of the heartbeat plus the time since); RSS, CPU and descriptors stay as
        sampled. A heartbeat older than the lease (tq-host's broker link down: the lease waits) is `stale`: every
        figure stays as it was then, the job too (it may have ended unheard). The job is shown only while the host
        still has it running there (its result may have come after the heartbeat)."""
        if not self.monitor:
            return None
        age = max(now - self.monitor_at, 0.0)
        view = dict(self.monitor, sampled_ago=round(age, 3), stale=age > lease)
        present = self.state in ("syncing", "live", "leaving")
        if present and not view["stale"]:
            view["uptime_seconds"] = _forward(view.get("uptime_seconds"), age)
        job = view.get("job")
        if not isinstance(job, dict) or not present or job.get("id") != self.running:
            view["job"] = None
        else:
            view["job"] = dict(job, elapsed_seconds=_forward(job.get("elapsed_seconds"), 0.0 if view["stale"] else age))
        return view


def _forward(value: Any, age: float) -> Any:
    """A duration reported `age` seconds ago, as of now (a value that is not a number stays as it came)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(value + age, 1)
    return value
