"""make bench --shape mixed: how long 4 workers take over jobs of mixed length, against the ideal, and (--peers) the
same jobs through beanstalkd, whose 4 workers each reserve one job at a time.

Every job runs `sleep SECONDS` (a `command = ["sleep"]` task, as [tasks.nap] in issue 26); both sides run the same
command, so what differs is how the jobs are dealt out. Two workloads:
- mixed: --mixed-jobs (120) durations drawn log-uniform between 0.05 and 2 s from a fixed seed (--mixed-seed): many
  short jobs and a few long ones (the distribution's median is 0.32 s, its mean 0.53 s), in the order drawn;
- long: 6 jobs of 3 s, two rounds over 4 workers at best (6 s); a worker dealt three of them while another has none
  takes 9 s, one dealt all six 18 s. Submitted one job a request, back to back, as a user's script of `tqctl
  submit` does: a single submit_many of them is dealt round robin in one step, which hides what the issue met.
tq: the mixed workload in one submit_many, the long one in 6 submits; then one wait_many. beanstalkd: a put per
job on one connection.
The makespan runs from the submit to the last job done. The ideal is a bound no schedule beats: the longest of total
work / workers, the longest job, and the sum of the 4th and 5th longest jobs (two of any 5 jobs share one of 4
workers). For the mixed workload that is max(total work / 4, longest job); for the long one it is 6 s. ratio =
ideal / makespan (1.0: no worker idle while a job waits). tq and beanstalkd alternate run for run, so that each pair
shares the machine's mood.

tq runs with the shipped config and one drop-in: the task, and a message size of 1 KiB (a job here is a few bytes;
the kernel's per-user queue budget, 800 KiB by default, is shared with whatever else runs as the same user).
"""

from __future__ import annotations

import math
import multiprocessing
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from tq.client import Client

WORKERS = 4
LONG = [3.0] * 6
DROPIN = """\
[mqueue]
max_message_size = 1024

[tasks.nap]
command = ["sleep"]   # the job's args: the seconds
"""


class Peer(Protocol):
    """A running beanstalkd (bench.py's Beanstalkd with no workers of its own)."""

    port: int


def mixed_durations(n: int, seed: int, low: float = 0.05, high: float = 2.0) -> list[float]:
    """`n` durations, log-uniform between `low` and `high` seconds, to the millisecond."""
    rng = random.Random(seed)
    return [round(math.exp(rng.uniform(math.log(low), math.log(high))), 3) for _ in range(n)]


def ideal(durations: list[float], workers: int = WORKERS) -> float:
    """The shortest makespan any schedule of these jobs over `workers` can have (a lower bound)."""
    longest = sorted(durations, reverse=True)
    paired = longest[workers - 1] + longest[workers] if len(longest) > workers else 0.0
    return round(max(sum(durations) / workers, longest[0], paired), 3)


def figures(seconds: float, durations: list[float], per_worker: dict[str, float]) -> dict[str, Any]:
    """One run: its makespan, ratio, and the work (seconds of sleep) each worker did."""
    return {"makespan_s": round(seconds, 3), "ratio": round(ideal(durations) / seconds, 3),
            "work_per_worker_s": {w: round(s, 3) for w, s in sorted(per_worker.items())}}


def tq_run(client: Client, durations: list[float], together: bool) -> dict[str, Any]:
    """The jobs in one submit_many (`together`) or one submit each, then one wait_many."""
    start = time.perf_counter()
    if together:
        ids = client.submit_many([("nap", [f"{d:.3f}"]) for d in durations])
    else:
        ids = [client.submit("nap", f"{d:.3f}") for d in durations]
    finished = client.wait_many(ids, timeout=sum(durations) + 120)
    seconds = time.perf_counter() - start
    per_worker = {str(w["instance"]): 0.0 for w in client.workers() if w["state"] == "live"}
    for job in finished.values():
        if job["state"] != "done":
            raise RuntimeError(f"bench: nap job {job['id']} ended {job['state']}: {job.get('error')}")
        key = str(job.get("worker"))
        per_worker[key] = per_worker.get(key, 0.0) + float(job["args"][0])
    return figures(seconds, durations, per_worker)


def _nap_worker(port: int, index: int, reports: Any) -> None:
    """A beanstalkd worker: reserve one job, run `sleep BODY`, delete it, report; again."""
    import greenstalk  # type: ignore[import-not-found,unused-ignore]

    with greenstalk.Client(("127.0.0.1", port)) as c:
        reports.put(("ready", index, 0.0))
        while True:
            job = c.reserve()
            subprocess.run(["sleep", job.body], check=True)
            c.delete(job)
            reports.put(("done", index, float(job.body)))


class NapWorkers:
    """4 beanstalkd workers running `sleep`, for as long as the `with` lasts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reports: Any = multiprocessing.Queue()
        self.procs = [multiprocessing.Process(target=_nap_worker, args=(port, i, self.reports), daemon=True)
                      for i in range(1, WORKERS + 1)]

    def __enter__(self) -> NapWorkers:
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.reports.get(timeout=30)  # each has connected
        return self

    def run(self, durations: list[float]) -> dict[str, Any]:
        import greenstalk

        start = time.perf_counter()
        with greenstalk.Client(("127.0.0.1", self.port)) as c:
            for d in durations:
                c.put(f"{d:.3f}")
        per_worker = {str(i): 0.0 for i in range(1, WORKERS + 1)}
        for _ in durations:
            _kind, index, seconds = self.reports.get(timeout=sum(durations) + 120)
            per_worker[str(index)] = per_worker.get(str(index), 0.0) + seconds
        return figures(time.perf_counter() - start, durations, per_worker)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
            p.join()


@contextmanager
def nap_peer(peer: Callable[[], AbstractContextManager[Peer]] | None) -> Iterator[NapWorkers | None]:
    if peer is None:
        yield None
        return
    with peer() as server, NapWorkers(server.port) as workers:
        yield workers


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by makespan) and every run's makespan and ratio."""
    ordered = sorted(runs, key=lambda r: r["makespan_s"])
    return {"median": ordered[len(ordered) // 2], "runs_makespan_s": [r["makespan_s"] for r in runs],
            "runs_ratio": [r["ratio"] for r in runs], "runs": runs}


def mixed_shape(rounds: int, jobs: int, seed: int, tq: Callable[[str], AbstractContextManager[Any]],
                peer: Callable[[], AbstractContextManager[Peer]] | None) -> dict[str, Any]:
    """Both workloads, `rounds` runs each on tq (`tq(dropin)` gives a running suite of 4 workers) and, with `peer`
    (a running beanstalkd), beside it run for run."""
    workloads = {"mixed": (mixed_durations(jobs, seed), True), "long": (LONG, False)}
    out: dict[str, Any] = {"workers": WORKERS, "seed": seed}
    with tq(DROPIN) as suite, nap_peer(peer) as bean:
        client = suite.client()
        for name, (durations, together) in workloads.items():
            got: dict[str, list[dict[str, Any]]] = {"tq": [], "beanstalkd": []}
            for i in range(rounds):
                order = ("tq", "beanstalkd") if i % 2 == 0 else ("beanstalkd", "tq")
                for side in order:
                    if side == "tq":
                        got["tq"].append(tq_run(client, durations, together))
                    elif bean is not None:
                        got["beanstalkd"].append(bean.run(durations))
            entry = {"jobs": len(durations), "submit_many": together, "work_s": round(sum(durations), 3),
                     "longest_s": max(durations), "shortest_s": min(durations),
                     "median_job_s": round(statistics.median(durations), 3),
                     "ideal_s": ideal(durations), "tq": summary(got["tq"])}
            if got["beanstalkd"]:
                entry["beanstalkd"] = summary(got["beanstalkd"])
                # beanstalkd's makespan / tq's, run for run: 1 or more, tq was no slower
                entry["beanstalkd_over_tq_runs"] = [round(b["makespan_s"] / t["makespan_s"], 3)
                                                  for t, b in zip(got["tq"], got["beanstalkd"], strict=True)]
            out[name] = entry
    return out


def _side(s: dict[str, Any]) -> str:
    m = s["median"]
    work = " ".join(f"{v:.1f}" for v in m["work_per_worker_s"].values())
    return (f"{m['makespan_s']:.2f} s, ratio {m['ratio']} ({' '.join(map(str, s['runs_ratio']))}), "
            f"work per worker {work} s")


def print_mixed(r: dict[str, Any], peer_name: str) -> None:
    print(f"mixed job lengths over {r['workers']} workers (`sleep` jobs): the makespan of the median run, "
          "ratio = ideal / makespan (each run), and the median run's seconds of work per worker")
    labels = {"mixed": lambda e: f"{e['jobs']} jobs {e['shortest_s']}-{e['longest_s']} s, log-uniform (seed "
                                 f"{r['seed']}), {e['work_s']:.1f} s of work, one submit_many",
              "long": lambda e: f"{e['jobs']} jobs of {e['longest_s']} s, one submit each"}
    rows = []
    for name, label in labels.items():
        e = r[name]
        rows.append((label(e), f"ideal {e['ideal_s']:.2f} s"))
        rows.append(("  tq", _side(e["tq"])))
        if "beanstalkd" in e:
            rows.append(("  " + peer_name, _side(e["beanstalkd"])))
            rows.append(("  makespan beanstalkd / tq (each run)", " ".join(map(str, e["beanstalkd_over_tq_runs"]))))
    width = max(len(n) for n, _ in rows)
    for n, value in rows:
        print(f"{n:<{width}}  {value}")
