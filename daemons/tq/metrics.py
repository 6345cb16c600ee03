"""tq's metrics in the Prometheus text format, from the snapshot that tq-host's `metrics` op returns.

The host counts (host/stats.py); the text is written here, by the Prometheus
client library (Debian: python3-prometheus-client), in tq-host, which imports
this module at the first `metrics` request for text: `tqctl metrics`, the
tq-metrics.service that feeds node_exporter's textfile collector, and (planned)
the HTTP gateway's /metrics get the text in one request and need not load the
library, each scrape a new process (it cost 60 ms of CPU of the 130 a scrape
took; in tq-host it is paid once). tqctl loads it only to write tq_up 0 when
the host cannot be reached. Names follow the
Prometheus conventions: a `tq_` prefix, base units (seconds, bytes), and
counters ending in `_total`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

OPEN_STATES = ("queued", "assigned", "running", "delayed", "failed", "deferred")


def families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one snapshot: tq-host's own, its jobs and queues, the workers, the store, the
    schedules."""
    yield from _host_families(snap)
    yield from _queue_families(snap["queues"])
    yield from _job_families(snap)
    yield from _fleet_families(snap)
    yield from _store_families(snap)
    yield from _schedule_families(snap.get("schedules", []))


def _up(value: int) -> GaugeMetricFamily:
    up = GaugeMetricFamily("tq_up", "1 when tq-host answered this scrape, 0 when it could not be reached")
    up.add_metric([], value)
    return up


def _host_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """tq_up, tq-host's start time, CPU and memory, and the jobs in the store by state."""
    yield _up(1)
    host = snap["host"]
    yield GaugeMetricFamily("tq_host_start_time_seconds", "When tq-host started (seconds since the epoch)",
                            value=host["start_time"])
    yield CounterMetricFamily("tq_host_cpu_seconds", "CPU time tq-host used (user and system)",
                              value=host["cpu_seconds"])
    if host.get("rss_bytes") is not None:
        yield GaugeMetricFamily("tq_host_resident_memory_bytes", "tq-host's resident memory", value=host["rss_bytes"])

    jobs = GaugeMetricFamily("tq_jobs", "Jobs in the store by state (finished ones until retention prunes them)",
                             labels=["state"])
    for state, n in sorted(snap["states"].items()):
        jobs.add_metric([state], n)
    yield jobs


def _queue_families(queues: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each queue's open jobs by state, the age of its oldest queued job, paused, unserved."""
    depth = GaugeMetricFamily("tq_queue_jobs", "Open jobs of each queue by state", labels=["queue", "state"])
    oldest = GaugeMetricFamily("tq_queue_oldest_queued_seconds", "Age of the queue's oldest queued job, since it was "
                               "queued: its submit, delay or retry (0: none queued)", labels=["queue"])
    paused = GaugeMetricFamily("tq_queue_paused", "1 while the queue is paused", labels=["queue"])
    unserved = GaugeMetricFamily("tq_queue_unserved", "1 while the queue has jobs and no live worker serves it",
                                 labels=["queue"])
    for q in queues:
        for state in OPEN_STATES:
            depth.add_metric([q["queue"], state], q["states"].get(state, 0))
        oldest.add_metric([q["queue"]], q["oldest_queued_age"] or 0)
        paused.add_metric([q["queue"]], int(q["paused"]))
        unserved.add_metric([q["queue"]], int(q["unserved"]))
    yield from (depth, oldest, paused, unserved)


def _job_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The jobs submitted, finished, failed and retried since tq-host started; the run time of attempts by task."""
    yield _counter("tq_jobs_submitted", "Jobs submitted since tq-host started", ["queue", "task"], snap["submitted"])
    yield _counter("tq_jobs_finished", "Jobs that reached a final state (done, dead, cancelled) since tq-host "
                   "started", ["queue", "task", "state"], snap["finished"])
    yield _counter("tq_job_attempts_failed", "Attempts that failed (error, timeout, lost worker) since tq-host "
                   "started", ["queue", "task"], snap["failed"])
    yield _counter("tq_job_retries", "Failed jobs queued for another attempt since tq-host started",
                   ["queue", "task"], snap["retried"])
    durations = snap["durations"]
    histogram = HistogramMetricFamily("tq_job_duration_seconds", "Run time of finished attempts, by task",
                                      labels=["task"])
    for task, h in durations["tasks"].items():
        histogram.add_metric([task], _buckets(durations["buckets"], h["counts"]), h["sum"])
    yield histogram


def _fleet_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The workers by state and transport, those found lost, and each worker's own figures."""
    workers = GaugeMetricFamily("tq_workers", "Worker instances tq-host knows, by state and transport (posix: "
                                "this machine's; amqp: other machines' through the broker)",
                                labels=["state", "transport"])
    transports = {"posix", *(w.get("transport", "posix") for w in snap["workers"])}
    states = ("live", "syncing", "leaving", "lost", "stopped")
    by_state = {(state, t): 0 for state in states for t in sorted(transports)}
    for w in snap["workers"]:
        key = (w["state"], w.get("transport", "posix"))
        by_state[key] = by_state.get(key, 0) + 1
    for (state, t), n in by_state.items():
        workers.add_metric([state, t], n)
    yield workers
    yield CounterMetricFamily("tq_workers_lost", "Workers found lost (silent past host.lease) since tq-host started",
                              value=snap["workers_lost"])
    yield from _worker_families(snap["workers"])


def _store_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The store's size and commits; the malformed messages dropped; the event stream's subscribers."""
    yield GaugeMetricFamily("tq_store_size_bytes", "Size of the SQLite store and its write-ahead log",
                            value=snap["store_bytes"])
    commits = snap["commits"]
    commit = HistogramMetricFamily("tq_store_commit_duration_seconds", "Time of each store commit (with its fsync "
                                   "when one is due)")
    commit.add_metric([], _buckets(commits["buckets"], commits["counts"]), commits["sum"])
    yield commit
    yield CounterMetricFamily("tq_store_commit_errors", "Store writes that failed (the step was rolled back)",
                              value=commits["errors"])
    yield CounterMetricFamily("tq_malformed_messages", "Malformed messages dropped from the queues",
                              value=snap["malformed_messages"])
    events = snap["events"]
    yield GaugeMetricFamily("tq_event_subscribers", "Connections following the event stream",
                            value=events["subscribers"])


def _worker_families(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each worker's own figures, from its last heartbeat (tq/monitor.py); absent where it could not read them."""
    specs = (("tq_worker_resident_memory_bytes", GaugeMetricFamily, "Worker's resident memory", "rss_bytes"),
             ("tq_worker_cpu_seconds", CounterMetricFamily, "CPU time the worker used", "cpu_seconds"),
             ("tq_worker_open_fds", GaugeMetricFamily, "Worker's open file descriptors", "fds"),
             ("tq_worker_uptime_seconds", GaugeMetricFamily, "Seconds since the worker started", "uptime_seconds"),
             ("tq_worker_jobs_done", CounterMetricFamily, "Attempts the worker ran that ended ok", "jobs_done"),
             ("tq_worker_jobs_failed", CounterMetricFamily, "Attempts the worker ran that failed", "jobs_failed"))
    for name, kind, doc, key in specs:
        family = kind(name, doc, labels=["worker"])
        for w in workers:
            value = (w.get("monitor") or {}).get(key)
            if value is not None and w["state"] != "stopped":
                family.add_metric([w["instance"]], value)
        yield family


def _schedule_families(schedules: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each schedule's last and next run, and whether its last run failed or was skipped (Client.schedules)."""
    specs = (("tq_schedule_last_run_timestamp_seconds", "When the schedule's last run was due (none yet: absent)",
              lambda s: s["last_run"]),
             ("tq_schedule_next_run_timestamp_seconds", "When its next run is due (disabled: absent)",
              lambda s: s["next_run"]),
             ("tq_schedule_last_run_failed", "1 while its last run is one tq-host could not submit",
              lambda s: int(bool(s.get("last_error")))),
             ("tq_schedule_last_run_skipped", "1 while its last run was skipped (overlap, catch_up)",
              lambda s: int(bool(s.get("last_skipped")))),
             ("tq_schedule_disabled", "1 while its next run cannot be computed",
              lambda s: int(bool(s.get("disabled")))))
    for name, doc, read in specs:
        family = GaugeMetricFamily(name, doc, labels=["schedule"])
        for schedule in schedules:
            if (value := read(schedule)) is not None:
                family.add_metric([schedule["name"]], value)
        yield family


def _counter(name: str, doc: str, labels: list[str], rows: list[list[Any]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for *values, n in rows:
        family.add_metric(values, n)
    return family


def _buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, from per-bucket counts."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        total += n
        out.append((bound, total))
    return out


class _Snapshot(Collector):
    def __init__(self, snap: dict[str, Any] | None) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        if self.snap is not None:
            yield from families(self.snap)
        else:
            yield _up(0)


def render(snap: dict[str, Any] | None) -> bytes:
    """The Prometheus text (format 0.0.4) of a snapshot; None: tq-host was not reachable (tq_up 0 alone)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snap))
    return generate_latest(registry)
