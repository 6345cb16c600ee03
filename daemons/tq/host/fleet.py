"""The workers as tq-host sees them: hello, heartbeats, leases, the Sync fence, and matching each report to
the attempt the host expects.

The fleet owns the host's mailbox, where every worker's messages arrive, and
each worker's inbox. A worker that appears, comes back with a new pid, or is
found again after a host restart is fenced before it gets work: the host sends
Sync at the lowest message priority, and when Synced comes back every job still
assigned to that worker was lost with it: its result would have come first (see
protocol.py). A worker silent for `host.lease` is lost. A lost job's attempt
counts (JobTable.lose): a job that kills its worker every time ends dead. A
lost worker is forgotten after `host.forget_lost`, or by `tqctl workers
--forget` (a stopped one too): a name used once is not listed for ever.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .. import config, protocol
from ..log import Burst
from ..transport import Mailbox, MailboxError
from ..transport.machines import WORKER_NAME_RE
from .carriage import carried, not_sent_why
from .jobs import JobTable
from .nameclash import NameClash, elsewhere
from .openjobs import ASSIGNED, ON_WORKER
from .records import JobRecord
from .store import Store
from .workerstate import WorkerState

MAX_MESSAGES_PER_STEP = 4096
LEASE_CHECK = 0.02  # seconds between looks at every worker's lease and pending fence or cancel
ROLLED_BACK_CAUSE = "not reported after a store write failed"  # the fence after a failed commit (recovery.py)


OpenInbox = Callable[[str], Mailbox]  # a worker's inbox by instance; raises MailboxError when it cannot
OnResult = Callable[[JobRecord, protocol.Result], None]
OnEvent = Callable[[str, str, list[str], str], None]  # a worker event: (event, instance, queues, detail)


class Fleet:
    def __init__(self, cfg: config.Config, mq: Mailbox, jobs: JobTable, store: Store, open_inbox: OpenInbox,
                 on_result: OnResult, on_event: OnEvent, logger: logging.Logger, malformed: Burst) -> None:
        self.cfg, self.mq, self.jobs, self.store = cfg, mq, jobs, store
        self.open_inbox, self.on_result = open_inbox, on_result
        self.logger, self.malformed = logger, malformed
        self.workers: dict[str, WorkerState] = {}
        self.tokens = 0
        self.last_result = 0.0  # monotonic time results last came in
        self.next_check = 0.0  # monotonic time of the next check_leases
        self.on_event = on_event  # up, fenced, lost, stopped
        self.clash = NameClash(logger)

    def configure(self, cfg: config.Config) -> None:
        """Take a reloaded configuration."""
        self.cfg = cfg

    def close(self) -> None:
        """Close the mailboxes this process holds open (the mailboxes themselves stay)."""
        for w in self.workers.values():
            if w.inbox is not None:
                w.inbox.close()
                w.inbox = None
        self.mq.close()

    # ---- intake -----------------------------------------------------------

    def intake(self, now: float) -> bool:
        """Handle what waits in the host's mailbox (a bounded number per step); True if more may wait."""
        for _ in range(MAX_MESSAGES_PER_STEP):
            data = self.mq.receive()
            if data is None:
                return False
            self.on_message(data, now)
        return True

    def on_message(self, data: bytes, now: float) -> None:
        """One message from a worker; a malformed one is counted and dropped, a bug costs only that message."""
        try:
            self._route(protocol.decode(data), now)
        except protocol.ProtocolError as e:  # raised before any part of the message is acted on
            self.malformed(f"dropped a malformed message on {self.cfg.host_queue}: {e}")
        except sqlite3.Error:
            raise  # the store failed: the host's step recovers
        except Exception:  # a bug must cost one message, never the daemon
            self.logger.exception("internal error on message %.200r", data)

    def _route(self, msg: protocol.Message, now: float) -> None:
        if isinstance(msg, protocol.Results):
            self.last_result = now
            for result in protocol.unpack_results(msg):  # checks every item before the first is handled
                job = self._report(result.instance, result.id, result.attempt, "result", now)
                if job is not None:
                    if result.ok:
                        self.workers[result.instance].done += 1
                    self.on_result(job, result)
        elif isinstance(msg, protocol.Started):
            self._on_started(msg, now)
        elif isinstance(msg, protocol.Heartbeat):
            self._on_heartbeat(msg, now)
        elif isinstance(msg, protocol.Hello):
            self._on_hello(msg, now)
        elif isinstance(msg, protocol.Synced):
            self._on_synced(msg, now)
        elif isinstance(msg, protocol.Release):
            job = self._report(msg.instance, msg.id, msg.attempt, "release", now)
            if job is not None:
                self.jobs.release(job, msg.instance)
        elif isinstance(msg, protocol.Bye):
            self._on_bye(msg, now)
        else:
            self.malformed(f"dropped a {type(msg).__name__} message, which workers do not send")

    def _worker(self, instance: str) -> WorkerState | None:
        if not WORKER_NAME_RE.fullmatch(instance):
            self.malformed(f"dropped a message from an invalid worker instance {instance[:40]!r}")
            return None
        return self.workers.setdefault(instance, WorkerState(instance, state="lost"))

    def _on_hello(self, msg: protocol.Hello, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None or self.clash.refuses(w, msg.pid, msg.machine, now, self.cfg.host.lease):
            return
        self.logger.info("worker %s (pid %d) says hello; queues %s", msg.instance, msg.pid, ",".join(msg.queues),
                         extra={"TQ_WORKER": msg.instance})
        if msg.pid != w.pid:
            w.monitor = {}  # the figures of the process before: its heartbeats bring the new one's
        self._adopt(w, msg, now)

    def _on_heartbeat(self, msg: protocol.Heartbeat, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None or self.clash.refuses(w, msg.pid, msg.machine, now, self.cfg.host.lease):
            return
        w.monitor, w.monitor_at = msg.monitor, now  # (empty from a worker of the previous release)
        if w.state in ("lost", "stopped") or msg.pid != w.pid or elsewhere(w, msg.machine):
            self.logger.info("worker %s (pid %d) is back", msg.instance, msg.pid, extra={"TQ_WORKER": msg.instance})
            self._adopt(w, msg, now)
            return
        w.machine = msg.machine or w.machine  # (learnt from a heartbeat after a tq-host restart)
        w.seen, w.heard, w.running = now, now, msg.running

    def _on_started(self, msg: protocol.Started, now: float) -> None:
        """An assigned job's handler started on its worker: the job is running (a late word is ignored)."""
        w = self.workers.get(msg.instance)
        job = self.jobs.jobs.get(msg.id)
        if (w is None or job is None or job.state != ASSIGNED or job.worker != msg.instance
                or job.attempts != msg.attempt):
            return
        w.seen, w.heard, w.running = now, now, msg.id
        self.jobs.begin(job, msg.started)

    def _on_bye(self, msg: protocol.Bye, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        w.seen = w.heard = now
        self.logger.info("worker %s is stopping", msg.instance, extra={"TQ_WORKER": msg.instance})
        self.fence(w, "leaving", "it stopped without reporting the job",
                    "it is stopping: it has handed back or finished its jobs; checking that each was reported")

    def _on_synced(self, msg: protocol.Synced, now: float) -> None:
        w = self._worker(msg.instance)
        if w is None:
            return
        w.seen = w.heard = now
        if msg.token != w.token or w.state not in ("syncing", "leaving"):
            return  # an old fence
        if elsewhere(w, msg.machine):  # taken from the shared inbox by a process refused under the name
            w.sync_due = True
            self._send_sync(w)
            return
        rolled_back = w.fence_cause == ROLLED_BACK_CAUSE  # (each job's "lost" line waits for the commit: log.py)
        if w.assigned and not rolled_back:  # a fault (a crash, a kill): a routine stop or restart reports every job
            self.logger.warning("worker %s: %d job(s) lost with it: %s", w.instance, len(w.assigned), w.fence_cause,
                                extra={"TQ_WORKER": w.instance})
        for job_id in sorted(w.assigned):
            self.jobs.lose(job_id, w.fence_cause)
        w.assigned.clear()
        w.running = 0
        w.state = "stopped" if w.state == "leaving" else "live"
        self._persist(w)
        self.on_event("stopped" if w.state == "stopped" else "up", w.instance, w.queues, f"pid {w.pid}")
        if not rolled_back:  # (checked again after a failed commit: it was live all along)
            self.logger.info("worker %s %s", w.instance, "stopped" if w.state == "stopped" else "is live",
                             extra={"TQ_WORKER": w.instance})

    # ---- the fence --------------------------------------------------------

    def _adopt(self, w: WorkerState, msg: protocol.Hello | protocol.Heartbeat, now: float) -> None:
        """A worker (re)appeared, as its hello or heartbeat says: reopen its inbox and fence it before dispatching
        to it."""
        cause, detail = _restart_cause(w, msg.pid, msg.machine)
        w.pid, w.seen, w.heard, w.lost_at = msg.pid, now, now, 0.0
        w.queues, w.not_sent = carried(self.cfg, self.logger, w.instance, msg.queues)
        w.machine = msg.machine
        self.reopen_inbox(w)
        if w.not_sent and w.inbox is not None:  # (best effort: a full inbox goes without; tq-host's journal has it)
            w.inbox.send(protocol.encode(protocol.NotSent(w.pid, w.machine, w.not_sent, not_sent_why(w.instance))),
                         protocol.CANCEL_PRIORITY)
        depth = w.inbox.max_messages if w.inbox is not None else 2
        w.prefetch = max(1, min(msg.prefetch, depth - 1))  # one slot stays free for the Sync fence
        self.fence(w, "syncing", cause, detail)
        self._persist(w)

    def _persist(self, w: WorkerState) -> None:
        """Store what recovery needs of a worker (which instances to fence; since when one is lost), only when it
        changed."""
        row = (w.pid, tuple(w.queues), w.state if w.state in ("stopped", "lost") else "live")
        if row != w.saved:
            self.store.save_worker(w.instance, w.pid, w.queues, row[2], w.lost_at or time.time())
            w.saved = row

    def reopen_inbox(self, w: WorkerState) -> None:
        if w.inbox is not None:
            w.inbox.close()
            w.inbox = None
        try:
            w.inbox = self.open_inbox(w.instance)
        except MailboxError as e:  # not there (yet): its next hello or heartbeat tries again
            self.logger.warning("worker %s: %s", w.instance, e, extra={"TQ_WORKER": w.instance})

    def fence(self, w: WorkerState, state: str, cause: str, detail: str) -> None:
        """Send the Sync fence. `detail`: what happened, for the "fenced" event; `cause`: what the jobs the fence
        finds unreported were lost to (none, after a routine stop, restart or reload)."""
        self.tokens += 1
        w.token, w.state, w.sync_due, w.fence_cause = self.tokens, state, True, cause
        self.on_event("fenced", w.instance, w.queues, detail)
        self._send_sync(w)

    def _send_sync(self, w: WorkerState) -> None:
        if w.inbox is None:
            return
        if w.inbox.send(protocol.encode(protocol.Sync(w.token)), protocol.SYNC_PRIORITY):
            w.sync_due = False

    def cancel(self, job: JobRecord) -> None:
        """Ask the worker that holds `job` to stop its attempt, or to drop it if it has not started (again at each
        step while its inbox is full, for as long as the worker holds the job)."""
        w = self.workers.get(job.worker or "")
        if w is not None:
            w.cancels_due.add((job.id, job.attempts))
            self._send_cancels(w)

    def _send_cancels(self, w: WorkerState) -> None:
        for job_id, attempt in sorted(w.cancels_due):
            if job_id not in w.assigned:
                w.cancels_due.discard((job_id, attempt))  # the worker reported it meanwhile
            elif w.inbox is not None and w.inbox.send(protocol.encode(protocol.Cancel(job_id, attempt)),
                                                      protocol.CANCEL_PRIORITY):
                w.cancels_due.discard((job_id, attempt))

    # ---- reports and leases -----------------------------------------------

    def _report(self, instance: str, job_id: int, attempt: int, what: str, now: float) -> JobRecord | None:
        """The job a worker reports on (result or release), now no longer assigned; None if the report is late."""
        w = self.workers.get(instance)
        job = self.jobs.jobs.get(job_id)
        if w is None or job is None or job.state not in ON_WORKER or job.worker != instance or job.attempts != attempt:
            held = w is not None and job_id in w.assigned
            if w is not None and (job is None or job.worker != instance):
                w.assigned.discard(job_id)  # it ended while the worker held it (cancelled unstarted): the slot is free
            if held and job is None:  # the worker's word on a job that ended while it held it: expected
                self.logger.info("job %d ended while worker %s held it; its %s is ignored", job_id, instance, what,
                                 extra={"TQ_JOB_ID": job_id, "TQ_WORKER": instance, "TQ_ATTEMPT": attempt})
                return None
            state = job.state if job else "finished or unknown"
            self.logger.warning("ignored a late %s for job %d attempt %d from worker %s (job is %s)",
                                what, job_id, attempt, instance, state,
                                extra={"TQ_JOB_ID": job_id, "TQ_WORKER": instance, "TQ_ATTEMPT": attempt})
            return None
        w.seen = w.heard = now
        w.assigned.discard(job.id)
        w.running = 0
        return job

    def check_leases(self, now: float) -> None:
        """Resend fences that found a full inbox; a worker silent past `host.lease` is lost, its jobs requeued.

        At most every LEASE_CHECK seconds: a step per job under load need not walk every worker each time.
        """
        if now < self.next_check:
            return
        self.next_check = now + LEASE_CHECK
        forget_before = time.time() - self.cfg.host.forget_lost
        for w in list(self.workers.values()):
            if w.state == "lost" and self.cfg.host.forget_lost and w.lost_at < forget_before:
                self.forget(w.instance, f"lost for more than {self.cfg.host.forget_lost:g}s (host.forget_lost)")
                continue
            if w.sync_due:
                self._send_sync(w)
            if w.cancels_due:
                self._send_cancels(w)
            if w.state in ("syncing", "live", "leaving") and now - w.seen > self.cfg.host.lease:
                self.logger.warning("worker %s lost: no message for %.1fs (host.lease); %d job(s) lost with it",
                                    w.instance, now - w.seen, len(w.assigned), extra={"TQ_WORKER": w.instance})
                for job_id in sorted(w.assigned):
                    self.jobs.lose(job_id, f"silent past the lease of {self.cfg.host.lease:g}s")
                w.assigned.clear()
                w.state, w.running, w.sync_due, w.lost_at = "lost", 0, False, time.time()
                self._persist(w)
                self.on_event("lost", w.instance, w.queues, f"no message for {now - w.seen:.1f}s (host.lease)")

    def forget(self, instance: str, why: str) -> None:
        """Drop a worker that is not there (lost or stopped) from the fleet and the store; one that comes back
        says hello again and is fenced as a new one."""
        w = self.workers.pop(instance)
        if w.inbox is not None:
            w.inbox.close()
        self.store.delete_worker(instance)
        self.logger.info("forgot worker %s (%s): %s", instance, w.state, why, extra={"TQ_WORKER": instance})

    # ---- what others ask --------------------------------------------------

    def dispatchable(self, now: float) -> list[WorkerState]:
        """Live workers with an inbox, not resting after a full one."""
        return [w for w in self.workers.values() if w.state == "live" and w.inbox is not None
                and w.blocked_until <= now]

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until the fleet has work of its own: a fence to resend, or a rested worker for queued jobs."""
        if any(w.sync_due or w.cancels_due for w in self.workers.values()):
            return 0.05
        if self.jobs.counts["queued"]:  # jobs taken back from a full inbox: try again when the worker may take them
            rests = [w.blocked_until - now for w in self.workers.values()
                     if w.state == "live" and w.blocked_until > now]
            return min(rests, default=None)
        return None

    def live(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "live")

    def syncing(self) -> int:
        """Workers fenced and not yet answering (after a restart of either side): there, and soon live again."""
        return sum(1 for w in self.workers.values() if w.state == "syncing")

    def public(self, now: float) -> list[dict[str, Any]]:
        return [w.public(now, self.cfg.host.lease) for w in sorted(self.workers.values(), key=lambda w: w.instance)]


def _restart_cause(w: WorkerState, pid: int, machine: str) -> tuple[str, str]:
    """Why a worker's hello or heartbeat fences it: what its unreported jobs were lost to, and what happened in
    plain words (the "fenced" event's detail)."""
    if elsewhere(w, machine):
        return (f"the worker was replaced by one on another machine (pid {pid})",
                f"the name is taken over from another machine, pid {pid}: checked before it gets work")
    if w.pid and pid != w.pid:
        return (f"the worker restarted: pid {w.pid} is gone, pid {pid} took its place",
                f"a new process, pid {pid} (pid {w.pid} before): checked before it gets work")
    if not w.pid:  # (its first hello: the fence finds nothing, but checks that)
        return "a worker tq-host has not seen before", "a new worker: checked before it gets work"
    if w.state == "lost":
        return "the worker came back after being lost", "back after being lost: checked before it gets work"
    return ("not reported by the worker before its fence",
            "it said hello again (a reload changed its queues or prefetch): checked before it gets more work")
