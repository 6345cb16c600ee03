"""The dashboard's live view: one summary a second (queues, workers, job counts by state, the host's counters of
finished jobs, and the time), as Server-Sent Events frames for `GET /api/v1/live` (page.py streams them).

Every open page shares ONE tq-host poll a second (a `metrics` request on the gateway's own link), and no poll runs
while no page is open: the first page to join starts the poller, the last to leave stops it. Each page has a slot
of one summary, overwritten by the next: a page that reads slowly skips to the newest and never receives a backlog,
so updates neither overlap nor pile up. The summary carries counters, not events: the page draws jobs per second
from their deltas, and the gateway keeps nothing that grows with the jobs that pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..control import RequestError
from ..states import FINAL
from .hostlink import HostLinks

INTERVAL = 1.0  # seconds between summaries
POLL_TIMEOUT = 5.0  # a poll tq-host has not answered in this long gives a summary that says so
END = b""  # in a slot: the stream ends (the gateway stops)
QUEUE_KEYS = ("queue", "paused", "states", "concurrency", "rate", "oldest_queued_age", "unserved")
WORKER_KEYS = ("instance", "state", "queues", "running", "done", "seen_ago")
MONITOR_KEYS = ("rss_bytes", "cpu_percent", "cpu_seconds")


def summarize(metrics: dict[str, Any], now: float) -> dict[str, Any]:
    """What a page shows, from tq-host's metrics reply: the per-task series summed to one counter per final
    state (the chart's source), the queues and workers cut to the fields the page shows."""
    finished = dict.fromkeys(sorted(FINAL), 0)
    for _queue, _task, state, count in metrics.get("finished", []):
        finished[state] = finished.get(state, 0) + count
    workers = []
    for w in metrics.get("workers", []):
        monitor = w.get("monitor") or {}
        workers.append({**{k: w.get(k) for k in WORKER_KEYS}, **{k: monitor.get(k) for k in MONITOR_KEYS}})
    host = metrics.get("host", {})
    return {"time": now, "host": {"pid": host.get("pid"), "start_time": host.get("start_time")},
            "states": metrics.get("states", {}), "finished": finished,
            "queues": [{k: q.get(k) for k in QUEUE_KEYS} for q in metrics.get("queues", [])], "workers": workers}


def frame(body: dict[str, Any]) -> bytes:
    """One Server-Sent Event: the summary as one `data:` line (JSON has no raw newline)."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class Slot:
    """One page's place for the newest summary: a new one overwrites one not yet taken."""

    def __init__(self) -> None:
        self.frame = b""
        self.ready = asyncio.Event()

    def put(self, data: bytes) -> None:
        self.frame = data
        self.ready.set()

    async def take(self) -> bytes:
        await self.ready.wait()
        self.ready.clear()
        return self.frame


class Summary:
    """The poller and the slots it fills."""

    def __init__(self, links: HostLinks, logger: logging.Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.links, self.logger, self.interval, self.clock = links, logger, interval, clock
        self.slots: set[Slot] = set()
        self.latest = b""  # the newest summary while the poller runs (a page that joins gets it at once)
        self.polls = 0  # tq-host requests made, ever
        self._task: asyncio.Task[None] | None = None

    def join(self) -> Slot:
        slot = Slot()
        if self.latest:
            slot.put(self.latest)
        self.slots.add(slot)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return slot

    def leave(self, slot: Slot) -> None:
        self.slots.discard(slot)
        if not self.slots:
            self.close()

    def close(self) -> None:
        """Stop polling (no page is open, or the gateway stops: then each page's stream ends)."""
        task, self._task = self._task, None
        self.latest = b""
        if task is not None:
            task.cancel()
        for slot in self.slots:
            slot.put(END)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.latest = frame(await self.poll())
            for slot in self.slots:
                slot.put(self.latest)
            next_at = max(next_at + self.interval, loop.time())  # (a slow poll delays, never bunches, the next)
            await asyncio.sleep(next_at - loop.time())

    async def poll(self) -> dict[str, Any]:
        """One summary from one tq-host request; when the host does not answer, one that says why."""
        self.polls += 1
        try:
            reply = await asyncio.wait_for(self.links.own.call("metrics"), POLL_TIMEOUT)
        except RequestError as e:
            return {"time": self.clock(), "error": {"code": e.code, "message": str(e)}}
        except TimeoutError:
            return {"time": self.clock(), "error": {"code": "unavailable",
                                                    "message": f"tq-host did not answer within {POLL_TIMEOUT:g}s"}}
        try:
            return summarize(reply.get("metrics", {}), self.clock())
        except (TypeError, ValueError, AttributeError):  # a reply of another shape (another tq-host version)
            self.logger.exception("cannot summarize tq-host's metrics reply")
            return {"time": self.clock(), "error": {"code": "internal",
                                                    "message": "tq-gateway cannot read tq-host's metrics (logged)"}}
