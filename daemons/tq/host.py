"""tq-host: keeps the jobs, dispatches them to workers, records their outcome.

One thread, one selector: the control socket, the host's POSIX queue and the
signal wake-up pipe. `step()` is one loop iteration: take in what arrived,
decide (promote delayed jobs, expire leases, dispatch), commit once (group
commit), and only then answer clients and send jobs. A job is assigned in the
store before its message is sent, so after a crash the Sync fence (see
protocol.py) finds every assignment that never reached its worker.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import gc
import heapq
import logging
import math
import os
import selectors
import signal
import socket
import sqlite3
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import __version__, config, control, log, protocol, transport
from .notify import Notifier
from .store import FINAL_STATES, JobRecord, Store, StoreError
from .transport import PosixQueue, restrict

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")  # malloc_trim: glibc only
except OSError:
    _libc = None
MAX_MESSAGES_PER_STEP = 4096
MUTATING_OPS = {"submit", "cancel", "retry"}
BURST_OPS = {"submit", "list"}  # requests that may allocate much; a poller's status calls do not count
PLAIN_SPEC = {"task", "args", "payload"}  # a job spec with no options of its own
LONG_JOB = 0.1  # seconds; a worker holding a job this long gets no prefetched jobs until it reports
FAST_JOB = 0.005  # seconds; a task whose runs take less (on average) is dispatched in batches to one worker
BLOCKED_BACKOFF = 0.2  # seconds a worker whose inbox was full gets no new jobs
PRUNE_BATCH = 1000  # finished jobs deleted per loop step while the store is over its retention policy
PRUNE_INTERVAL = 60.0  # seconds between retention checks once caught up
IDLE_TRIM = 1.0  # seconds without requests or results before the memory of a burst is given back


@dataclass
class WorkerState:
    """What the host knows of one worker instance."""

    instance: str
    pid: int = 0
    queues: list[str] = field(default_factory=list)
    prefetch: int = 1
    state: str = "syncing"  # syncing | live | leaving | lost | stopped
    seen: float = 0.0  # monotonic time of the last message from it
    inbox: PosixQueue | None = None
    assigned: set[int] = field(default_factory=set)
    token: int = 0
    sync_due: bool = False
    running: int = 0
    done: int = 0
    saved: tuple[int, tuple[str, ...], bool] | None = None  # the row last written to the store
    blocked_until: float = 0.0  # its inbox was full: no dispatch to it before this (monotonic)

    def public(self, now: float) -> dict[str, Any]:
        return {"instance": self.instance, "pid": self.pid, "state": self.state, "queues": self.queues,
                "prefetch": self.prefetch, "assigned": sorted(self.assigned), "running": self.running or None,
                "done": self.done, "seen_ago": round(now - self.seen, 3)}


@dataclass
class Conn:
    sock: socket.socket
    uid: int
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    closed: bool = False
    writing: bool = False  # the selector watches it for EVENT_WRITE


class Host:
    def __init__(self, cfg: config.Config, config_path: str | None) -> None:
        self.cfg, self.config_path = cfg, config_path
        self.logger = log.setup("tq-host", cfg.log.level)
        self.events = log.JobEvents(self.logger, cfg.log.job_events, cfg.log.job_events_per_second)
        self.malformed = log.Burst(self.logger)
        self.refused = log.Burst(self.logger)
        self.store_errors = log.Burst(self.logger, interval=5.0)
        self._reserve_fd = os.open("/dev/null", os.O_RDONLY)  # spare descriptor to refuse clients when out
        self._chunk = bytearray(1 << 16)  # every connection reads into this, then appends what came
        self.notifier = Notifier()
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[int, JobRecord] = {}  # every job not in a final state
        self.ready: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # queue -> (-prio, id)
        self.delayed: list[tuple[float, int]] = []  # (run_at, id) for delayed and failed jobs
        self.counts: collections.Counter[str] = collections.Counter()
        self.task_seconds: dict[str, float] = {}  # task name -> moving average of its run time (from results)
        self.known_tasks: dict[str, tuple[str, config.TaskConfig]] = {}  # checked names (cleared at reload)
        self.workers: dict[str, WorkerState] = {}
        self.waiters: dict[int, list[tuple[Conn, Any, float]]] = collections.defaultdict(list)
        # (connection, reply, whether the reply is only true once this step's commit succeeds)
        self.replies: list[tuple[Conn, dict[str, Any], bool]] = []
        self.outbox: list[tuple[WorkerState, JobRecord]] = []  # dispatched this step, sent after the commit
        self.tokens = 0
        self.next_prune = 0.0
        self.last_trim = self.last_work = 0.0  # monotonic times: memory trimmed, request or result taken in
        self.stop_requested = self.reload_requested = False
        self.started = time.time()
        self.store: Store | None = None
        self.queue: PosixQueue | None = None
        self.listener: socket.socket | None = None

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Acquire the state dir, open store, queue and socket, recover, then READY=1."""
        cfg = self.cfg
        transport.check_limits(cfg.mqueue.max_messages, cfg.mqueue.max_message_size)
        os.makedirs(cfg.host.state_dir, mode=0o750, exist_ok=True)
        self._lock = open(os.path.join(cfg.host.state_dir, "tq.lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another tq-host is running on {cfg.host.state_dir}") from None
        self.store = Store(cfg.host.state_dir, cfg.host.durability)
        drained: list[bytes] = []
        self.queue = transport.open_queue(cfg.host_queue, cfg.mqueue.max_messages, cfg.mqueue.max_message_size,
                                          drained=drained)
        # The queue only wakes the selector: every step drains it once, after the sockets (one empty read).
        self.sel.register(self.queue.fileno(), selectors.EVENT_READ, lambda _mask: None)
        self._listen(cfg.host.socket)
        self._signals()
        self._recover()
        self.last_work = time.monotonic()  # recovery allocates too: trim a second after start
        for data in drained:
            self._on_message(data, time.monotonic())
        self.store.commit()
        self._flush()
        self.logger.info("tq-host %s ready: store %s, queue %s, socket %s, %d open jobs", __version__,
                         self.store.path, cfg.host_queue, cfg.host.socket, len(self.jobs))
        self.notifier.ready(self._status_text())

    def _listen(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise StoreError(f"socket {path} is in use by another tq-host")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        restrict(path, 0o660)
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, self._on_accept)

    def _signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only set a flag: the main loop does the work.
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requested = True

    def _on_wake(self, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _recover(self) -> None:
        """Load every open job from the store and fence every known worker with a Sync."""
        assert self.store is not None
        self.jobs.clear()
        self.ready.clear()
        self.delayed.clear()
        self.counts.clear()
        self.outbox.clear()
        self.counts.update(self.store.count_final())
        for job in self.store.open_jobs():
            self._track(job)
        now = time.monotonic()
        known = {w[0]: w for w in self.store.workers()}
        for job in self.jobs.values():
            if job.state == "running" and job.worker and job.worker not in known:
                known[job.worker] = (job.worker, 0, [], "syncing", 0.0)
        for w in self.workers.values():  # after a failed commit: workers whose hello was not stored
            if w.instance not in known and w.state != "stopped":
                known[w.instance] = (w.instance, w.pid, w.queues, "syncing", 0.0)
        for instance, pid, queues, state, _seen in known.values():
            w = self.workers.get(instance) or WorkerState(instance, pid=pid, queues=queues)
            self.workers[instance] = w
            w.assigned = {j.id for j in self.jobs.values() if j.state == "running" and j.worker == instance}
            w.seen = now
            if state == "stopped" and not w.assigned:
                w.state = "stopped"
                continue
            self._open_inbox(w)
            self._start_sync(w, "leaving" if state == "leaving" else "syncing")

    def _track(self, job: JobRecord) -> None:
        """Put an open job into the in-memory indexes."""
        self.jobs[job.id] = job
        self.counts[job.state] += 1
        if job.state == "queued":
            heapq.heappush(self.ready[job.queue], (-job.priority, job.id))
        elif job.state in ("delayed", "failed"):
            heapq.heappush(self.delayed, (job.run_at or 0.0, job.id))

    def _set_state(self, job: JobRecord, state: str, change: str = "any") -> None:
        """Move a job to `state` in the indexes and stage the change (`change`: see store._UPDATES)."""
        self.counts[job.state] -= 1
        self.counts[state] += 1
        job.state = state
        if state == "queued":
            job.worker = None
            heapq.heappush(self.ready[job.queue], (-job.priority, job.id))
        elif state in ("delayed", "failed"):
            heapq.heappush(self.delayed, (job.run_at or 0.0, job.id))
        elif state in FINAL_STATES:
            self.jobs.pop(job.id, None)
            for conn, rid, _deadline in self.waiters.pop(job.id, []):
                self.replies.append((conn, {"rid": rid, "ok": True, "job": job.public()}, True))
        assert self.store is not None
        self.store.update(job, change)

    def run(self) -> int:
        self.start()
        while not self.stop_requested:
            self.step()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.logger.info("tq-host stopping; workers carry on and reconnect when it is back")
        if self.store is not None:
            self.store.commit()
        self._flush()
        if self.listener is not None:
            try:
                os.unlink(self.cfg.host.socket)
            except OSError:
                pass
            self.listener.close()
        if self.store is not None:
            self.store.close()

    # ---- the loop step --------------------------------------------------

    def step(self, max_wait: float | None = None) -> None:
        """One loop iteration: intake, decisions, one commit, then replies and dispatch."""
        assert self.store is not None and self.queue is not None
        now = time.monotonic()
        wait = self._wait_time(now)
        if max_wait is not None:
            wait = min(wait, max_wait)
        try:
            events = self.sel.select(wait)
            for key, mask in events:
                key.data(mask)
            now = time.monotonic()
            self._on_queue()
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            self._promote_delayed()
            self._check_workers(now)
            self._expire_waiters(now)
            self._dispatch(now)
            self._prune(now)
            self._trim_memory(now)
            self.store.commit()
        except sqlite3.Error as e:  # disk full, I/O error: this step is undone, the host carries on
            self._store_failed(e)
        self._flush()
        self.events.tick()
        self.notifier.tick(now)
        if self.notifier.status_due(now):
            self.notifier.status(self._status_text(), now)

    def _trim_memory(self, now: float) -> None:
        """Give the memory of a burst back once the host has had no request or result for a second.

        Dicts never shrink as entries are removed: the open-job indexes are copied to their present size.
        Then a full collection, and glibc's malloc_trim returns the free pages.
        """
        if self.last_trim >= self.last_work or now - self.last_work < IDLE_TRIM:
            return
        self.last_trim = now
        self.jobs = dict(self.jobs)
        self.waiters = collections.defaultdict(list, self.waiters)
        self.ready = collections.defaultdict(list, {q: h for q, h in self.ready.items() if h})
        gc.collect()
        if _libc is not None:
            _libc.malloc_trim(0)

    def _wait_time(self, now: float) -> float:
        wait = 1.0
        ping = self.notifier.tick(now)
        if ping is not None:
            wait = min(wait, ping)
        if self.delayed:
            wait = min(wait, max(0.0, self.delayed[0][0] - time.time()))
        if self.last_trim < self.last_work:
            wait = min(wait, max(0.0, self.last_work + IDLE_TRIM - now))
        if any(w.sync_due for w in self.workers.values()):
            wait = min(wait, 0.05)
        if self.counts["queued"]:  # jobs taken back from a full inbox: try again when the worker may take them
            for w in self.workers.values():
                if w.state == "live" and w.blocked_until > now:
                    wait = min(wait, w.blocked_until - now)
        return max(wait, 0.0)

    def _store_failed(self, error: Exception) -> None:
        """A write failed (disk full, I/O error): forget this step, reload from the store, fence workers."""
        assert self.store is not None
        self.store_errors(f"store write failed: {error}; rolled back this step and recovered from {self.store.path}")
        try:
            self.store.rollback()
        except sqlite3.Error:
            pass
        for job_id in [j for j in self.waiters if j >= self.store.next_id]:  # submitted with wait_for, undone
            del self.waiters[job_id]
        # Nothing this step decided is true any more: every answer that depended on it becomes a refusal.
        failed = f"store write failed: {error}; nothing was changed, try again"
        refused = {(id(c), repr(r.get("rid"))) for c, r, durable in self.replies if durable}
        self.replies = [(c, {"rid": r.get("rid"), "ok": False, "code": "unavailable", "error": failed}, False)
                        if durable else (c, r, False) for c, r, durable in self.replies
                        # a refused request gets that one answer (not also its wait_for's timeout)
                        if durable or (id(c), repr(r.get("rid"))) not in refused]
        self._recover()

    # ---- intake: worker messages ----------------------------------------

    def _on_queue(self) -> None:
        assert self.queue is not None
        now = time.monotonic()
        for _ in range(MAX_MESSAGES_PER_STEP):
            data = self.queue.receive()
            if data is None:
                break
            self._on_message(data, now)

    def _on_message(self, data: bytes, now: float) -> None:
        try:
            self._dispatch_message(protocol.decode(data), now)
        except protocol.ProtocolError as e:  # raised before any part of the message is acted on
            self.malformed(f"dropped a malformed message on {self.cfg.host_queue}: {e}")
        except sqlite3.Error:
            raise
        except Exception:  # a bug must cost one message, never the daemon
            self.logger.exception("internal error on message %.200r", data)

    def _dispatch_message(self, msg: protocol.Message, now: float) -> None:
        if isinstance(msg, protocol.Results):
            self.last_work = now
            for result in protocol.unpack_results(msg):  # checks every item before the first is handled
                self._on_result(result, now)
        elif isinstance(msg, protocol.Heartbeat):
            self._on_heartbeat(msg, now)
        elif isinstance(msg, protocol.Hello):
            self._on_hello(msg, now)
        elif isinstance(msg, protocol.Synced):
            self._on_synced(msg, now)
        elif isinstance(msg, protocol.Release):
            self._on_release(msg, now)
        elif isinstance(msg, protocol.Bye):
            self._on_bye(msg, now)
        else:
            self.malformed(f"dropped a {type(msg).__name__} message, which workers do not send")

    def _worker(self, instance: str) -> WorkerState | None:
        if not config.INSTANCE_RE.match(instance):
            self.malformed(f"dropped a message from an invalid worker instance {instance[:40]!r}")
            return None
        return self.workers.setdefault(instance, WorkerState(instance, state="lost"))

    def _on_hello(self, msg: protocol.Hello, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        self.logger.info("worker %s (pid %d) says hello; queues %s", msg.instance, msg.pid, ",".join(msg.queues))
        self._adopt(w, msg.pid, msg.queues, msg.prefetch, now)

    def _adopt(self, w: WorkerState, pid: int, queues: list[str], prefetch: int, now: float) -> None:
        """A worker (re)appeared: reopen its inbox and fence it before dispatching to it."""
        w.pid, w.queues, w.seen = pid, queues, now
        self._open_inbox(w)
        depth = w.inbox.mq.max_messages if w.inbox is not None else 2
        w.prefetch = max(1, min(prefetch, depth - 1))  # one slot stays free for the Sync fence
        self._start_sync(w, "syncing")
        self._persist_worker(w)

    def _persist_worker(self, w: WorkerState) -> None:
        """Store what recovery needs of a worker (which instances to fence), only when it changed."""
        row = (w.pid, tuple(w.queues), w.state == "stopped")
        if row != w.saved:
            assert self.store is not None
            self.store.save_worker(w.instance, w.pid, w.queues, "stopped" if row[2] else "live", time.time())
            w.saved = row

    def _open_inbox(self, w: WorkerState) -> None:
        if w.inbox is not None:
            w.inbox.close()
            w.inbox = None
        try:
            w.inbox = transport.open_queue(self.cfg.inbox(w.instance), 1, self.cfg.mqueue.max_message_size,
                                           create=False)
        except transport.QueueError as e:
            self.logger.warning("worker %s: %s", w.instance, e)

    def _start_sync(self, w: WorkerState, state: str) -> None:
        self.tokens += 1
        w.token, w.state, w.sync_due = self.tokens, state, True
        self._send_sync(w)

    def _send_sync(self, w: WorkerState) -> None:
        if w.inbox is None:
            return
        data = protocol.encode(protocol.Sync(w.token))
        if w.inbox.send(data, protocol.SYNC_PRIORITY):
            w.sync_due = False

    def _on_synced(self, msg: protocol.Synced, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        w.seen = now
        if msg.token != w.token or w.state not in ("syncing", "leaving"):
            return  # an old fence
        for job_id in sorted(w.assigned):
            self._requeue(job_id, f"not reported by worker {w.instance} before its sync fence")
        w.assigned.clear()
        w.running = 0
        w.state = "stopped" if w.state == "leaving" else "live"
        self._persist_worker(w)
        self.logger.info("worker %s %s", w.instance, "stopped" if w.state == "stopped" else "is live")

    def _on_heartbeat(self, msg: protocol.Heartbeat, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        if w.state in ("lost", "stopped") or msg.pid != w.pid:
            self.logger.info("worker %s (pid %d) is back", msg.instance, msg.pid)
            self._adopt(w, msg.pid, msg.queues, msg.prefetch, now)
            return
        w.seen, w.running = now, msg.running

    def _on_bye(self, msg: protocol.Bye, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        w.seen = now
        self.logger.info("worker %s is stopping", msg.instance)
        self._start_sync(w, "leaving")

    def _match(self, instance: str, job_id: int, attempt: int) -> tuple[WorkerState, JobRecord] | None:
        """The job and worker if this report is about the job's current attempt on that worker."""
        w = self.workers.get(instance)
        job = self.jobs.get(job_id)
        if w is None or job is None or job.state != "running" or job.worker != instance or job.attempts != attempt:
            return None
        return w, job

    def _report(self, instance: str, job_id: int, attempt: int, what: str, now: float) -> JobRecord | None:
        """The job a worker reports on (result or release), now no longer assigned; None if the report is late."""
        found = self._match(instance, job_id, attempt)
        if found is None:
            self._late(instance, job_id, attempt, what)
            return None
        w, job = found
        w.seen = now
        w.assigned.discard(job.id)
        w.running = 0
        return job

    def _on_result(self, msg: protocol.Result, now: float) -> None:
        job = self._report(msg.instance, msg.id, msg.attempt, "result", now)
        if job is None:
            return
        job.finished_at = time.time()
        self._timed(job.task, msg.duration)
        if msg.ok:
            self.workers[msg.instance].done += 1
            job.result, job.error = msg.output, None
            self._set_state(job, "done", "done")
            self.events.event("done", job.id, job.task, job.queue, job.attempts, msg.instance,
                              f"in {msg.duration:.3f}s")
            return
        job.error = msg.error
        self._fail(job, msg.instance)

    def _timed(self, task: str, seconds: float) -> None:
        if len(self.task_seconds) > 10_000:  # task names come from clients: never trust their count
            self.task_seconds.clear()
        average = self.task_seconds.get(task)
        self.task_seconds[task] = seconds if average is None else 0.8 * average + 0.2 * seconds

    def _fast(self, task: str) -> bool:
        return self.task_seconds.get(task, FAST_JOB) < FAST_JOB

    def _fail(self, job: JobRecord, instance: str | None) -> None:
        if job.attempts <= job.retries:
            delay = min(job.backoff * 2 ** max(job.attempts - 1, 0), job.backoff_max)
            job.run_at = time.time() + delay
            self._set_state(job, "failed")
            self.events.event("retrying", job.id, job.task, job.queue, job.attempts, instance,
                              f"{job.error}; attempt {job.attempts + 1} in {delay:.3g}s")
        else:
            self._set_state(job, "dead")
            self.events.event("dead", job.id, job.task, job.queue, job.attempts, instance,
                              f"{job.error}; out of attempts ({job.attempts})")

    def _late(self, instance: str, job_id: int, attempt: int, what: str) -> None:
        job = self.jobs.get(job_id)
        state = job.state if job else "finished or unknown"
        self.logger.warning("ignored a late %s for job %d attempt %d from worker %s (job is %s)",
                            what, job_id, attempt, instance, state,
                            extra={"TQ_JOB_ID": job_id, "TQ_WORKER": instance, "TQ_ATTEMPT": attempt})

    def _on_release(self, msg: protocol.Release, now: float) -> None:
        job = self._report(msg.instance, msg.id, msg.attempt, "release", now)
        if job is None:
            return
        job.attempts -= 1
        self._set_state(job, "queued")
        self.events.event("released", job.id, job.task, job.queue, job.attempts, msg.instance,
                          "handed back by a stopping worker")

    def _requeue(self, job_id: int, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state != "running":
            return
        instance = job.worker
        self._set_state(job, "queued")
        self.events.event("lost", job.id, job.task, job.queue, job.attempts, instance, f"requeued: {reason}")

    # ---- decisions ------------------------------------------------------

    def _promote_delayed(self) -> None:
        now = time.time()
        while self.delayed and self.delayed[0][0] <= now:
            _, job_id = heapq.heappop(self.delayed)
            job = self.jobs.get(job_id)
            if job is not None and job.state in ("delayed", "failed") and (job.run_at or 0.0) <= now:
                self._set_state(job, "queued")

    def _check_workers(self, now: float) -> None:
        for w in self.workers.values():
            if w.sync_due:
                self._send_sync(w)
            if w.state in ("syncing", "live", "leaving") and now - w.seen > self.cfg.host.lease:
                self.logger.warning("worker %s lost: no message for %.1fs (host.lease); requeueing %d job(s)",
                                    w.instance, now - w.seen, len(w.assigned), extra={"TQ_WORKER": w.instance})
                for job_id in sorted(w.assigned):
                    self._requeue(job_id, f"worker {w.instance} lost")
                w.assigned.clear()
                w.state, w.running, w.sync_due = "lost", 0, False

    def _prune(self, now: float) -> None:
        """Apply the retention policy in small bites, so that no step stalls for long."""
        h = self.cfg.host
        finished = sum(self.counts[state] for state in FINAL_STATES)
        if now < self.next_prune and finished <= h.retain_count:
            return
        assert self.store is not None
        deleted = self.store.prune(time.time() - h.retain_age, finished - h.retain_count, PRUNE_BATCH)
        for state, n in deleted.items():
            self.counts[state] -= n
        caught_up = sum(deleted.values()) < PRUNE_BATCH
        # Checking means reading from the oldest job on: at most every 60 s (sooner for a short retain_age).
        self.next_prune = now + (min(PRUNE_INTERVAL, h.retain_age / 10) if caught_up else 0.0)

    def _expire_waiters(self, now: float) -> None:
        for job_id in [j for j, ws in self.waiters.items() if any(d <= now for _, _, d in ws)]:
            keep = []
            for conn, rid, deadline in self.waiters[job_id]:
                if deadline <= now:
                    self.replies.append((conn, {"rid": rid, "ok": False, "code": "timeout",
                                                "error": f"job {job_id} did not finish in time"}, False))
                else:
                    keep.append((conn, rid, deadline))
            if keep:
                self.waiters[job_id] = keep
            else:
                del self.waiters[job_id]

    def _dispatch(self, now: float) -> None:
        """Hand ready jobs to live workers with free slots, best priority first.

        Round robin, one job per worker per round, so that slow jobs run side by side. A job of a task
        known to be fast (FAST_JOB) lets the same worker take the next one too: a worker woken once for a
        batch costs a fraction of four workers woken for one job each.
        """
        live = [w for w in self.workers.values()
                if w.state == "live" and w.inbox is not None and w.blocked_until <= now]
        while live:
            progressed = []
            for w in live:
                if w.assigned and self._busy_with_long_job(w):  # the jobs given below cannot change this
                    continue
                while len(w.assigned) < w.prefetch:
                    job = self._pop_ready(w.queues)
                    if job is None:
                        break
                    job.attempts += 1
                    job.worker, job.started_at = w.instance, time.time()
                    self._set_state(job, "running", "dispatched")
                    w.assigned.add(job.id)
                    self.outbox.append((w, job))
                    self.events.event("dispatched", job.id, job.task, job.queue, job.attempts, w.instance)
                    if not self._fast(job.task):
                        progressed.append(w)
                        break
            live = progressed

    def _busy_with_long_job(self, w: WorkerState) -> bool:
        """Prefetch is for fast-flowing jobs: a worker that has held a job for a while gets no more for now."""
        now = time.time()
        oldest = min((self.jobs[i].started_at or now for i in w.assigned if i in self.jobs), default=now)
        return now - oldest > LONG_JOB

    def _pop_ready(self, queues: list[str]) -> JobRecord | None:
        best: tuple[int, int] | None = None
        best_queue = ""
        for q in queues:
            heap = self.ready.get(q)
            while heap:
                job = self.jobs.get(heap[0][1])
                if job is not None and job.state == "queued" and job.queue == q:
                    break
                heapq.heappop(heap)  # stale entry
            if heap and (best is None or heap[0] < best):
                best, best_queue = heap[0], q
        if best is None:
            return None
        heapq.heappop(self.ready[best_queue])
        return self.jobs[best[1]]

    # ---- output ---------------------------------------------------------

    def _flush(self) -> None:
        """After the commit: send the jobs decided this step and the replies."""
        undelivered = []
        for w, jobs, data in self._batches():
            if w.inbox is None or not w.inbox.send(data, protocol.mq_priority(max(j.priority for j in jobs))):
                undelivered += [(w, job) for job in jobs]
        self.outbox.clear()
        for w, job in undelivered:  # the inbox was full or gone: take the assignment back, rest the worker
            w.blocked_until = time.monotonic() + BLOCKED_BACKOFF
            if job.state == "running" and job.worker == w.instance:
                w.assigned.discard(job.id)
                job.attempts -= 1
                self._set_state(job, "queued")
        if undelivered:
            assert self.store is not None
            try:
                self.store.commit()
            except sqlite3.Error as e:
                self._store_failed(e)
        for conn, reply, _durable in self.replies:
            if not conn.closed:
                conn.wbuf += control.encode(reply)
                self._write(conn)
        self.replies.clear()

    def _batches(self) -> list[tuple[WorkerState, list[JobRecord], bytes]]:
        """The step's dispatches as Jobs messages: per worker, in priority order, each within the size limit.

        A batch carries the best priority of its jobs, so a batch with an urgent job overtakes older ones.
        """
        limit = self.cfg.mqueue.max_message_size
        per_worker: dict[str, tuple[WorkerState, list[JobRecord]]] = {}
        for w, job in self.outbox:
            per_worker.setdefault(w.instance, (w, []))[1].append(job)
        batches = []
        for w, jobs in per_worker.values():
            chunk: list[JobRecord] = []
            items: list[bytes] = []
            size = protocol.batch_size([])
            for job in jobs:
                item = protocol.job_item(job.id, job.attempts, job.task, job.args_json, job.payload_json, job.timeout,
                                         job.priority)
                if chunk and size + len(item) + 1 > limit:
                    batches.append((w, chunk, protocol.jobs_message(items)))
                    chunk, items, size = [], [], protocol.batch_size([])
                size += len(item) + (1 if items else 0)  # and its comma
                chunk.append(job)
                items.append(item)
            if chunk:
                batches.append((w, chunk, protocol.jobs_message(items)))
        return batches

    def _status_text(self) -> str:
        c = self.counts
        live = sum(1 for w in self.workers.values() if w.state == "live")
        return (f"{c['queued']} queued, {c['running']} running, {c['delayed'] + c['failed']} waiting; "
                f"{c['done']} done, {c['dead']} dead; {live} worker(s) live")

    # ---- control socket -------------------------------------------------

    def _on_accept(self, _mask: int) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: refuse clearly, or the listener stays readable and spins
                self._refuse_connection(e)
                return
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            sock.setblocking(False)
            conn = Conn(sock, uid)
            self.sel.register(sock, selectors.EVENT_READ, lambda mask, c=conn: self._on_conn(c, mask))

    def _refuse_connection(self, error: OSError) -> None:
        """Out of descriptors: free the reserve one, accept, answer with the reason, close, re-reserve."""
        assert self.listener is not None
        self.refused(f"cannot accept a connection: {error}")
        os.close(self._reserve_fd)
        try:
            sock, _ = self.listener.accept()
            reply = {"ok": False, "code": "unavailable", "error": f"tq-host is out of resources: {error}"}
            sock.setblocking(False)
            try:
                sock.send(control.encode(reply))
            except OSError:
                pass
            sock.close()
        except OSError:
            pass
        finally:
            self._reserve_fd = os.open("/dev/null", os.O_RDONLY)

    def _on_conn(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write(conn)
        if not mask & selectors.EVENT_READ or conn.closed:
            return
        try:
            n = conn.sock.recv_into(self._chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._close(conn)
            return
        searched = len(conn.rbuf)  # a long request comes in many chunks: look for its end in the new one only
        conn.rbuf += memoryview(self._chunk)[:n]
        while (end := conn.rbuf.find(b"\n", searched)) >= 0:
            line = bytes(conn.rbuf[:end])
            del conn.rbuf[:end + 1]
            searched = 0
            self._on_request(conn, line)
        if len(conn.rbuf) > control.MAX_LINE:
            conn.wbuf += control.encode({"ok": False, "code": "bad_request", "error": "request too long"})
            self._write(conn)
            self._close(conn)

    def _write(self, conn: Conn) -> None:
        if conn.closed:
            return
        try:
            sent = conn.sock.send(conn.wbuf)
            del conn.wbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if bool(conn.wbuf) != conn.writing:  # watch for room only while a reply waits for it
            conn.writing = bool(conn.wbuf)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.sel.modify(conn.sock, events, self.sel.get_key(conn.sock).data)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def _on_request(self, conn: Conn, line: bytes) -> None:
        rid: Any = None
        try:
            req = control.decode(line)
            rid = req.get("rid")
            op = control.field(req, "op", str)
            if op in BURST_OPS:
                self.last_work = time.monotonic()
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise control.RequestError("bad_request", f"unknown op {op!r}")
            reply = handler(conn, rid, req)
            if reply is not None:
                self.replies.append((conn, {"rid": rid, "ok": True, **reply}, op in MUTATING_OPS))
        except control.RequestError as e:
            self.replies.append((conn, {"rid": rid, "ok": False, "code": e.code, "error": str(e)}, False))
        except sqlite3.Error as e:  # the step recovers from store errors; this request is refused
            self.replies.append((conn, {"rid": rid, "ok": False, "code": "unavailable", "error": str(e)}, False))
            raise
        except Exception:  # a bug must cost one request, never the daemon
            self.logger.exception("internal error on request %.200r", line)
            self.replies.append((conn, {"rid": rid, "ok": False, "code": "bad_request",
                                        "error": "internal error in tq-host (logged)"}, False))

    # ---- control operations (each returns the reply body, or None when it answers later) ----

    def _op_ping(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__}

    def _op_submit(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """Store the jobs; with `wait_for` (seconds, one job) answer twice: the ids now, the job when finished."""
        specs = control.field(req, "jobs", list)
        wait_for = control.field(req, "wait_for", (int, float), None)
        if wait_for is not None and (len(specs) != 1 or not 0 <= wait_for < math.inf):
            raise control.RequestError("bad_request", "wait_for takes one job and a finite number of seconds")
        jobs = [self._new_job(spec, conn.uid) for spec in specs]  # validate all before storing any
        assert self.store is not None
        ids = []
        detail = f"by uid {conn.uid}"
        for job in jobs:
            job.id = self.store.insert(job)
            self._track(job)
            ids.append(job.id)
            self.events.event("submitted", job.id, job.task, job.queue, detail=detail)
        if wait_for is not None:  # the waiter's answer follows this one (see _set_state, _expire_waiters)
            self.waiters[ids[0]].append((conn, rid, time.monotonic() + float(wait_for)))
            return {"ids": ids, "more": True}
        return {"ids": ids}

    def _new_job(self, spec: Any, uid: int) -> JobRecord:
        """A job from a submit request's spec, checked; RequestError says what is wrong with it.

        The hot path of a batch: a task name seen before skips its checks, a spec with no options takes
        the task's settings as they are (the config checked them).
        """
        if not isinstance(spec, dict):
            raise control.RequestError("bad_request", "each job is an object")
        name = spec.get("task")
        known = self.known_tasks.get(name) if isinstance(name, str) else None
        name, task = known or self._resolve_task(spec)
        if spec.keys() <= PLAIN_SPEC:
            queue, priority, delay, timeout, retries = task.queue, task.priority, 0.0, task.timeout, task.retries
        else:
            queue, priority, delay, timeout, retries = self._job_options(spec, task)
        args = spec.get("args")
        if type(args) is not list:
            args = control.field(spec, "args", list, [])  # absent or null: none; anything else is refused
        payload = spec.get("payload")
        args_json, payload_json = protocol.to_json(args), None if payload is None else protocol.to_json(payload)
        size = protocol.job_size(name, args_json, payload_json)
        if size > self.cfg.mqueue.max_message_size:
            raise control.RequestError("too_large", f"job {name!r} is too large: its message is {size} bytes; "
                                                    f"mqueue.max_message_size is {self.cfg.mqueue.max_message_size}"
                                                    " bytes")
        now = time.time()
        return JobRecord(0, name, args_json, payload_json, queue, priority, "delayed" if delay > 0 else "queued", 0,
                         retries, timeout, task.backoff, task.backoff_max, now + delay if delay > 0 else None, None,
                         None, None, uid, now, None, None)  # positional: the fields in order

    def _resolve_task(self, spec: dict[str, Any]) -> tuple[str, config.TaskConfig]:
        """The task of a spec, checked and remembered (its name interned: one string for all its jobs)."""
        name = control.field(spec, "task", str)
        if not config.TASK_NAME_RE.fullmatch(name):
            raise control.RequestError("bad_request", f"invalid task name {name[:60]!r} (dot-separated words of "
                                                      "letters, digits, _ - :)")
        task = self.cfg.task_for(name)
        if task is None:
            known = ", ".join(t.name for t in self.cfg.tasks) or "(none configured)"
            raise control.RequestError("unknown_task", f"unknown task {name!r}; known tasks: {known}")
        if len(self.known_tasks) > 10_000:  # task names come from clients: never trust their count
            self.known_tasks.clear()
        name = sys.intern(name)
        self.known_tasks[name] = (name, task)
        return name, task

    @staticmethod
    def _job_options(spec: dict[str, Any], task: config.TaskConfig) -> tuple[str, int, float, float, int]:
        """queue, priority, delay, timeout and retries of a job spec, each checked, the task's by default."""
        queue = control.field(spec, "queue", str, task.queue)
        if not config.NAME_RE.match(queue):
            raise control.RequestError("bad_request", f"invalid queue name {queue[:60]!r}")
        priority = control.field(spec, "priority", int, task.priority)
        if not config.PRIORITY_MIN <= priority <= config.PRIORITY_MAX:
            raise control.RequestError("bad_request", f"priority must be between {config.PRIORITY_MIN} and "
                                                      f"{config.PRIORITY_MAX}")
        delay = float(control.field(spec, "delay", (int, float), 0.0))
        timeout = float(control.field(spec, "timeout", (int, float), task.timeout))
        retries = control.field(spec, "retries", int, task.retries)
        if not (0 <= delay < math.inf and 0 < timeout < math.inf and retries >= 0):
            raise control.RequestError("bad_request", "delay and retries must be >= 0 and timeout > 0, all finite")
        return queue, priority, delay, timeout, retries

    def _lookup(self, req: dict[str, Any]) -> JobRecord:
        job_id = control.field(req, "id", int)
        job = self.jobs.get(job_id)
        if job is None:
            assert self.store is not None
            job = self.store.get(job_id)
        if job is None:
            raise control.RequestError("not_found", f"no job {job_id}")
        return job

    def _op_get(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        return {"job": self._lookup(req).public()}

    def _op_wait(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any] | None:
        job = self._lookup(req)
        if job.state in FINAL_STATES:
            return {"job": job.public()}
        timeout = control.field(req, "timeout", (int, float), 10**9)
        self.waiters[job.id].append((conn, rid, time.monotonic() + max(0.0, float(timeout))))
        return None

    def _op_list(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        limit = control.field(req, "limit", int, 50)
        jobs = self.store.query(state=control.field(req, "state", str, None),
                                queue=control.field(req, "queue", str, None),
                                task=control.field(req, "task", str, None), limit=max(0, min(limit, 100000)))
        return {"jobs": [(self.jobs.get(j.id) or j).public() for j in jobs]}

    def _op_status(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        states = {s: self.counts[s] for s in ("queued", "delayed", "running", "failed", "done", "dead",
                                              "cancelled")}
        live = sum(1 for w in self.workers.values() if w.state == "live")
        return {"version": __version__, "pid": os.getpid(), "uptime": round(time.time() - self.started, 3),
                "states": states, "workers_live": live, "workers_known": len(self.workers),
                "malformed_messages": self.malformed.total, "config": list(self.cfg.files)}

    def _op_workers(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        return {"workers": [w.public(now) for w in sorted(self.workers.values(), key=lambda w: w.instance)]}

    def _op_cancel(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        job = self._lookup(req)
        if job.state not in ("queued", "delayed", "failed"):
            raise control.RequestError("conflict", f"job {job.id} is {job.state}; only queued, delayed or "
                                                   "failed (waiting to retry) jobs can be cancelled")
        job.finished_at = time.time()
        self._set_state(job, "cancelled")
        self.events.event("cancelled", job.id, job.task, job.queue, job.attempts)
        return {"job": job.public()}

    def _op_retry(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        job = self._lookup(req)
        if job.state not in ("dead", "cancelled", "failed"):
            raise control.RequestError("conflict", f"job {job.id} is {job.state}; only dead, cancelled or "
                                                   "failed jobs can be retried")
        job.attempts, job.error, job.finished_at, job.run_at = 0, None, None, None
        if job.id in self.jobs:  # failed, waiting to retry
            self._set_state(job, "queued")
        else:  # dead or cancelled: back into the indexes
            self.counts[job.state] -= 1
            job.state = "queued"
            self._track(job)
            assert self.store is not None
            self.store.update(job)
        self.events.event("retry requested", job.id, job.task, job.queue)
        return {"job": job.public()}

    # ---- reload ---------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        new = config.reload(self.config_path, self.logger)
        if new is None:
            self.notifier.ready(self._status_text())
            return
        if new.mqueue != self.cfg.mqueue:
            self.logger.warning("[mqueue] changed: takes effect at the next restart")
        if (new.host.state_dir, new.host.socket) != (self.cfg.host.state_dir, self.cfg.host.socket):
            self.logger.warning("host.state_dir and host.socket take effect at the next restart")
        self.cfg = config.Config(new.files, config.HostConfig(self.cfg.host.state_dir, self.cfg.host.socket,
                                                              new.host.durability, new.host.lease),
                                 self.cfg.mqueue, new.worker, new.worker_overrides, new.log, new.tasks)
        self.known_tasks.clear()
        logging.getLogger().setLevel(new.log.level.upper())
        self.events.configure(new.log.job_events, new.log.job_events_per_second)
        self.logger.info("configuration reloaded from %s", ", ".join(new.files))
        self.notifier.ready(self._status_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tq-host", description="The tq host daemon: keeps and dispatches jobs.")
    parser.add_argument("--config", help="config file (default: $TQ_CONFIG or /etc/tq/tq.toml)")
    parser.add_argument("--version", action="version", version=f"tq-host {__version__}")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        print(f"tq-host: {e}", file=sys.stderr)
        return 2
    host = Host(cfg, args.config)
    try:
        return host.run()
    except (StoreError, transport.QueueError, OSError) as e:
        host.logger.error("cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
