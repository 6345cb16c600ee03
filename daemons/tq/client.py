"""The Python client API; tqctl is a thin layer over it.

    from tq.client import Client
    c = Client()                          # or Client(config="/etc/tq/tq.toml"), or through tq-gateway:
                                          # Client(url="https://tq.example:8790", token="...")
    jid = c.submit("task-1", "arg")       # returns once the job is committed
    job = c.wait(jid, timeout=10)         # dict; raises TimeoutError
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import clienttokens
from .clienterrors import (
    HostUnreachable,
    InternalError,
    JobTimeout,
    NotFound,
    PermissionDenied,
    Refused,
    TqError,
    Unauthorized,
)
from .connection import Connection

if TYPE_CHECKING:
    import datetime

__all__ = ["Client", "Connection", "HostUnreachable", "InternalError", "JobTimeout", "NotFound", "PermissionDenied",
           "Refused", "TqError", "Unauthorized"]


class Client(Connection, clienttokens.TokenOps):
    """tq's operations over a connection to tq-host."""

    # ---- jobs -------------------------------------------------------------

    def submit(self, task: str, *args: Any, queue: str | None = None, priority: int | None = None,
               delay: float = 0, timeout: float | None = None, retries: int | None = None,
               payload: Any = None, at: float | datetime.datetime | None = None, unique: str | None = None,
               after: int | None = None) -> int:
        """Submit one job; returns its id once the job is durable.

        `at`: when to run it (a datetime, or seconds since the epoch), instead of a `delay`. `unique`: a key; while
        a job submitted with it is open (queued, delayed, running or waiting to retry), its id is returned and
        nothing is created. `after`: a job id; this one waits until that one is done (and is cancelled if it
        ends dead or cancelled).
        """
        if queue is None and priority is None and not delay and timeout is None and retries is None and (
                payload is None and at is None and unique is None and after is None):
            spec: dict[str, Any] = {"task": task, "args": list(args)}  # the common case, without the options' walk
        else:
            spec = _spec(task, list(args), queue=queue, priority=priority, delay=delay, timeout=timeout,
                         retries=retries, payload=payload, at=_epoch(at), unique=unique, after=after)
        return self.submit_spec(spec)[0]

    def submit_spec(self, spec: dict[str, Any]) -> tuple[int, bool]:
        """One job as submit_many takes it: its id, and True if an open job with its unique key answered (coalesced)."""
        reply = self.call("submit", jobs=[spec])
        return int(reply["ids"][0]), bool(reply.get("existing"))

    def chain(self, *steps: tuple[str, list[Any]] | dict[str, Any]) -> list[int]:
        """Submit a chain in one commit: each step starts when the one before is done, with its result as payload;
        a step that ends dead or cancelled cancels the rest. Steps as submit_many's; their ids, in order."""
        return self.submit_chain(*steps)[0]

    def submit_chain(self, *steps: tuple[str, list[Any]] | dict[str, Any]) -> tuple[list[int], bool]:
        """A chain as chain() submits it: its ids, and True if an open job with the first step's unique key
        answered for the whole chain (nothing was created: the ids are that job's and its own chain's steps')."""
        specs = [dict(j) if isinstance(j, dict) else {"task": j[0], "args": list(j[1])} for j in steps]
        reply = self.call("submit", jobs=specs, chain=True)
        return [int(i) for i in reply["ids"]], bool(reply.get("existing"))

    def publish(self, exchange: str, key: str, task: str, *args: Any, **options: Any) -> list[int]:
        """Submit through an exchange: one job for each bound queue that `key` matches, in one commit; their ids.
        A key that matches no binding is refused (nothing is submitted). `options` as submit's, but no queue."""
        spec = _spec(task, list(args), **(options | {"at": _epoch(options.get("at"))}))
        return [int(i) for i in self.call("submit", exchange=exchange, key=key, jobs=[spec])["ids"]]

    def submit_and_wait(self, task: str, *args: Any, wait_timeout: float | None = None, queue: str | None = None,
                        priority: int | None = None, delay: float = 0, timeout: float | None = None,
                        retries: int | None = None, payload: Any = None) -> dict[str, Any]:
        """Submit one job and wait for it, in one request: the job once it is done, dead or cancelled.

        The host acknowledges the submit (durable) first and answers again when the job has finished; one
        round trip fewer than submit() then wait(). Past `wait_timeout` raises JobTimeout naming the job,
        which stays submitted.
        """
        spec = _spec(task, list(args), queue=queue, priority=priority, delay=delay, timeout=timeout,
                     retries=retries, payload=payload)
        limit = 10.0**9 if wait_timeout is None else wait_timeout
        job_id = int(self.call("submit", jobs=[spec], wait_for=limit)["ids"][0])  # acknowledged: it is durable
        try:
            return dict(self._more(limit)["job"])
        except JobTimeout as e:
            raise JobTimeout(str(e), {}, [job_id]) from None  # its message names the job; pending as wait_many's
        except TqError as e:
            raise type(e)(f"job {job_id} was submitted, then: {e}") from None

    def submit_many(self, jobs: Iterable[tuple[str, list[Any]] | dict[str, Any]]) -> list[int]:
        """Submit many jobs in one request and one commit: (task, args) pairs or dicts of submit's fields."""
        specs = [dict(j) if isinstance(j, dict) else {"task": j[0], "args": list(j[1])} for j in jobs]
        return [int(i) for i in self.call("submit", jobs=specs)["ids"]]

    def get(self, job_id: int) -> dict[str, Any]:
        return dict(self.call("get", id=job_id)["job"])

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job is done, dead or cancelled; raise TimeoutError (JobTimeout, `pending` == [job_id])
        past `timeout`."""
        fields: dict[str, Any] = {"id": job_id}
        if timeout is not None:
            fields["timeout"] = timeout
        try:
            return dict(self.call("wait", wait=timeout, **fields)["job"])
        except JobTimeout as e:
            raise JobTimeout(str(e), {}, [job_id]) from None

    def wait_many(self, job_ids: Iterable[int], timeout: float | None = None) -> dict[int, dict[str, Any]]:
        """Wait until every job is done, dead or cancelled, in one request; their jobs by id, in the order given.

        Past `timeout` raises JobTimeout, whose `finished` and `pending` say which did and which did not;
        `timeout=0` answers at once with those finished already (no JobTimeout).
        """
        ids = list(job_ids)
        fields: dict[str, Any] = {"ids": ids}
        if timeout is not None:
            fields["timeout"] = timeout
        reply = self.call("wait", wait=timeout, **fields)
        jobs = {int(j["id"]): dict(j) for j in reply["jobs"]}
        finished = {i: jobs[i] for i in dict.fromkeys(ids) if i in jobs}
        pending = [int(i) for i in reply.get("pending", [])]
        if pending and timeout != 0:
            raise JobTimeout(f"{len(pending)} of {len(finished) + len(pending)} jobs did not finish in time "
                             f"(job {pending[0]}{' and others' if len(pending) > 1 else ''})", finished, pending)
        return finished

    def list_jobs(self, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, after: int | None = None) -> list[dict[str, Any]]:  # after: the next page
        reply = self.call("list", state=state, queue=queue, task=task, limit=limit, after=after)
        return [dict(j) for j in reply["jobs"]]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job; a running one is stopped on its worker first (the reply's `stopping` is then true)."""
        reply = self.call("cancel", id=job_id)
        return dict(reply["job"]) | {"stopping": bool(reply.get("stopping"))}

    def retry(self, job_id: int) -> dict[str, Any]:
        """Run a dead, failed or cancelled job again: the job as the retry left it (queued, or deferred behind the
        job it waits for), and `later`: the later steps of its chain that come back with it."""
        reply = self.call("retry", id=job_id)
        return dict(reply["job"]) | {"later": list(reply.get("later", []))}

    def cancel_matching(self, state: str | None = None, task: str | None = None, queue: str | None = None,
                        older_than: float | None = None) -> dict[str, Any]:
        """Cancel every job that matches all the filters given (at least one): `ids` cancelled, and how many
        matched but were `refused` (not the caller's to change)."""
        reply = self.call("cancel", state=state, task=task, queue=queue, older_than=older_than)
        return _bulk_reply(reply)

    def retry_matching(self, state: str | None = None, task: str | None = None, queue: str | None = None,
                       older_than: float | None = None) -> dict[str, Any]:
        """Run again every dead, cancelled or failed job that matches all the filters given (see cancel_matching;
        `ids` holds the later chain steps that come back with a job too); `refused` counts too the jobs whose retry
        was refused (the job they wait for is dead or cancelled, their unique key is held): `reasons` says why
        (the first few), `not_yours` counts the others."""
        reply = self.call("retry", state=state, task=task, queue=queue, older_than=older_than)
        return _bulk_reply(reply)

    def pause(self, queue: str) -> dict[str, Any]:
        """Dispatch nothing more from `queue` (it still takes submits; running jobs finish). Root and admins."""
        reply = self.call("pause", queue=queue)
        return {k: reply[k] for k in ("queue", "paused", "changed")}

    def resume(self, queue: str) -> dict[str, Any]:
        reply = self.call("resume", queue=queue)
        return {k: reply[k] for k in ("queue", "paused", "changed")}

    def queues(self) -> list[dict[str, Any]]:
        """Every queue: `states` (its open jobs by state), `oldest_queued_age` (seconds), `paused`, `workers`
        (the instances that serve it) and `unserved` (it has jobs and no live worker serves it)."""
        return [dict(q) for q in self.call("queues")["queues"]]

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: `next_run`, `last_run` (seconds since the epoch), `last_job` and its `last_state`, or
        `last_error` when the last run was not submitted, `last_skipped` when it was skipped (its `last_job` is then
        None); `disabled` when its next run cannot be computed."""
        return [dict(x) for x in self.call("schedules")["schedules"]]

    def status(self) -> dict[str, Any]:
        return {k: v for k, v in self.call("status").items() if k not in ("ok", "rid")}

    def workers(self) -> list[dict[str, Any]]:
        return [dict(w) for w in self.call("workers")["workers"]]

    def forget_worker(self, instance: str) -> dict[str, Any]:
        """Drop a lost or stopped worker from `workers` and the status counts (refused while it is there: conflict).
        Root and admins. The host forgets a lost one by itself after `host.forget_lost`."""
        reply = self.call("forget_worker", instance=instance)
        return {k: reply[k] for k in ("instance", "state")}

    def metrics(self) -> dict[str, Any]:
        """The host's counters and gauges (tq.metrics.render writes them as Prometheus text)."""
        return dict(self.call("metrics")["metrics"])

    def metrics_text(self) -> str:
        """The same, as Prometheus text (format 0.0.4), written by the host with the Prometheus client library."""
        return str(self.call("metrics", format="text")["text"])

    def events(self, job: int | None = None, task: str | None = None, queue: str | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        """The last `limit` events (the host keeps the last 1000) that match the filters, oldest first."""
        return [dict(e) for e in self.call("events", job=job, task=task, queue=queue, limit=limit)["events"]]

    def subscribe(self, job: int | None = None, task: str | None = None, queue: str | None = None,
                  recent: int = 0, after: float | None = None) -> Iterator[bytes]:
        """Follow the events that match the filters: chunks of whole JSON lines, first up to `recent` of the last
        events (with `after`, a time: of those since then), then each new one as it happens (the host sends every
        0.1 s). A line `{"missed": N}` says N events were not sent because this reader fell behind; `{"missed": null,
        "since": T1, "until": T2, "reason": ...}` that some between T1 and T2 may be gone (the host restarted since
        `after`). Blocks until the host goes (HostUnreachable); the connection carries nothing else from then on:
        close the client to stop. The subscription is made before this returns (a missing host raises here)."""
        reply = self.call("subscribe", job=job, task=task, queue=queue, recent=recent, after=after)
        return self._stream(reply["events"])


def _epoch(at: float | datetime.datetime | None) -> float | None:
    return at if at is None or isinstance(at, (int, float)) else at.timestamp()


def _spec(task: str, args: list[Any], **options: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"task": task, "args": args}
    spec.update({k: v for k, v in options.items() if v is not None and not (k == "delay" and not v)})
    return spec




def _bulk_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A bulk cancel's or retry's reply: `ids` changed, `refused` in all, `not_yours` of them and `reasons` for
    the others (a tq-host before these counted every refusal as not the caller's)."""
    refused = int(reply.get("refused", 0))
    return {"ids": list(reply["ids"]), "refused": refused, "not_yours": int(reply.get("not_yours", refused)),
            "reasons": [str(r) for r in reply.get("reasons", [])]}
