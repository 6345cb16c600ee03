"""make bench: tq-host + 4 workers with the shipped default config (and the units' Environment=) on a
temporary state dir.

Prints two tables and writes JSON to .bench/bench-<time>.json: 4 clients (the drain and the other figures),
and one producer submitting one job at a time (2 and 4 workers, durability normal and full). With --peers,
beanstalkd runs the same workloads with the greenstalk client, run for run (-b beside normal, -b -f0 beside
full). Each throughput and latency figure is the median of --rounds runs (3); the JSON keeps every run. The
fdatasync count per submit needs root and `perf` (Debian: linux-perf); without them it reads "not counted".
`--shape mixed` (bench/makespan.py): the makespan of `sleep` jobs of mixed length over 4 workers against the ideal,
beside beanstalkd with --peers.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import posix_ipc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import makespan  # noqa: E402

from harness import Daemon, Suite  # noqa: E402
from tq.client import Client  # noqa: E402

WORKERS = 4
T = TypeVar("T")
CLK = os.sysconf("SC_CLK_TCK")


def unit_environment(unit: Path) -> dict[str, str]:
    """The Environment= settings of a shipped unit, so that the daemon runs here as systemd would run it."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median `key` (the machine is noisy: one run proves little), and every run's `key`."""
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], f"runs_{key}": [r[key] for r in runs]}


def shipped_config(suite: Suite, durability: str = "full", tree: Path = REPO) -> None:
    """The shipped /etc/tq/tq.toml (of checkout `tree`: an older tq refuses keys it does not know), with only its
    paths and queue prefix pointed at the temporary suite (and the durability level given)."""
    text = (tree / "etc/tq/tq.toml").read_text()
    text = text.replace('durability = "full"', f'durability = "{durability}"')
    text = text.replace('"/var/lib/tq"', f'"{suite.dir}/state"').replace('"/run/tq/tq.sock"', f'"{suite.dir}/tq.sock"')
    text = text.replace('prefix = "/tq"', f'prefix = "{suite.prefix}"')
    suite.config.write_text(text)


@contextlib.contextmanager
def shipped_suite(dropin: str = "", workers: int = WORKERS) -> Iterator[Suite]:
    """tq-host and `workers` workers as the units run them, with the shipped config and `dropin` (the text of
    tq.d/bench.toml, if any), on a temporary state dir; torn down after."""
    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-"))
    suite = Suite(tmp)
    try:
        shipped_config(suite)
        if dropin:
            (tmp / "tq.d").mkdir()
            (tmp / "tq.d" / "bench.toml").write_text(dropin)
        suite.host(env=unit_environment(REPO / "units/tq-host.service"))
        for i in range(1, workers + 1):
            suite.worker(str(i), env=unit_environment(REPO / "units/tq-worker@.service"))
        suite.wait_live(workers)
        yield suite
    finally:
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)


def drain(suite: Suite, jobs: int, clients: int) -> dict[str, float]:
    """`jobs` echo jobs from `clients` concurrent clients (client API): first submit to last completion."""
    per = jobs // clients
    conns = [suite.client() for _ in range(clients)]
    start = time.perf_counter()

    def submit(c: Client) -> None:
        for i in range(0, per, 100):
            c.submit_many([("task-1", [str(j)]) for j in range(i, min(i + 100, per))])

    threads = [threading.Thread(target=submit, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.perf_counter()
    watcher = conns[0]
    # Every job was acknowledged: none queued or running means all done. (Not the count of done jobs: the store
    # keeps at most retain_count, 1,000,000, and a long bench passes that.)
    while (states := watcher.status()["states"])["queued"] + states.get("assigned", 0) + states["running"]:
        time.sleep(0.002)  # polling the host's counters; the figure is dominated by the drain itself
    elapsed = time.perf_counter() - start
    return {"jobs": per * clients, "seconds": round(elapsed, 3), "jobs_per_s": round(per * clients / elapsed),
            "submit_phase_s": round(submitted - start, 3)}


def quiet(suite: Suite) -> None:
    """Wait until no job is queued or running: what one measurement submitted must not slow the next."""
    c = suite.client()
    while (states := c.status()["states"])["queued"] + states.get("assigned", 0) + states["running"]:
        time.sleep(0.01)  # polling the host's counters between measurements


def settle(suite: Suite) -> None:
    """quiet(), then past the host's trim (host/upkeep.py IDLE_TRIM, 1 s after its last request or result): the drain
    starts on a host that gave its memory back and takes it again (about 6,500 page faults in a 60,000-job
    drain, against 650 when it starts right after the one before). The observed drain always started so (its
    followers take seconds to start) and the plain one did not, which charged the trim to the observers."""
    quiet(suite)
    time.sleep(2.0)


def runs(suite: Suite, n: int, measure: Callable[[], T]) -> list[T]:
    """`n` runs of `measure`, each started with no job queued or running."""
    out = []
    for _ in range(n):
        quiet(suite)
        out.append(measure())
    return out


def _submitter(config: str, submits: int, ready: Any, go: Any) -> None:
    c = Client(config=config)
    c.status()
    ready.release()
    go.wait()
    for i in range(submits):
        c.submit("task-1", str(i))


def submit_rate(suite: Suite, clients: int, submits: int) -> float:
    """Durable submits per second from `clients` client processes, each waiting for every acknowledgement."""
    ready, go = multiprocessing.Semaphore(0), multiprocessing.Event()
    procs = [multiprocessing.Process(target=_submitter, args=(str(suite.config), submits, ready, go))
             for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    return round(clients * submits / (time.perf_counter() - start))


def batch_rates(suite: Suite, jobs: int) -> dict[str, float]:
    c = suite.client()
    start = time.perf_counter()
    for i in range(0, jobs, 5000):
        c.submit_many([("task-1", [str(j)]) for j in range(i, min(i + 5000, jobs))])
    api = jobs / (time.perf_counter() - start)
    lines = "".join(json.dumps({"task": "task-1", "args": [str(i)]}) + "\n" for i in range(jobs))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tq.ctl", "--config", str(suite.config), "submit", "--batch", "-"],
                       input=lines, capture_output=True, text=True, env=suite.env, check=True)
    cli = jobs / (time.perf_counter() - start)
    assert len(r.stdout.split()) == jobs
    return {"submit_many_jobs_per_s": round(api), "tqctl_batch_jobs_per_s": round(cli)}


def latency(suite: Suite, n: int) -> dict[str, float]:
    """Sequential submits that wait for their result (Client.submit_and_wait: one request, answered twice)."""
    c = suite.client()
    samples = []
    for i in range(n):
        start = time.perf_counter()
        c.submit_and_wait("task-1", str(i), wait_timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p99_ms": round(samples[int(n * 0.99) - 1], 3)}


def tqctl_wall(suite: Suite, runs: int) -> float:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        subprocess.run([str(REPO / ".venv/bin/tqctl"), "--config", str(suite.config), "submit", "task-1", str(i)],
                       capture_output=True, check=True, env=suite.env)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _run_s(pid: int) -> float:
    """The CPU time a process has run, in seconds: /proc/PID/schedstat counts nanoseconds (stat's clock ticks
    round a follower's few milliseconds a drain to 0 or 10)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def idle(daemons: list[Daemon], seconds: float) -> dict[str, dict[str, float]]:
    before = {d.name: _cpu_ticks(d.pid) for d in daemons}
    time.sleep(seconds)  # the measurement window
    return {d.name: {"cpu_percent": round((_cpu_ticks(d.pid) - before[d.name]) / CLK / seconds * 100, 3),
                     "rss_mb": _rss_mb(d.pid)} for d in daemons}


def _echo_peer(name: str, n: int) -> None:
    inbox, outbox = posix_ipc.MessageQueue(name + ".a"), posix_ipc.MessageQueue(name + ".b")
    for _ in range(n):
        msg, _prio = inbox.receive()
        outbox.send(msg)


def _sink(name: str, n: int) -> None:
    q = posix_ipc.MessageQueue(name + ".a")
    for _ in range(n):
        q.receive()


def raw_posix_ipc(n: int) -> dict[str, float]:
    """Two processes, the queues' default depth (10) and a 100-byte message."""
    name = f"/tqbench-{os.getpid()}"
    qs = [posix_ipc.MessageQueue(name + s, posix_ipc.O_CREAT, max_messages=10, max_message_size=8192)
          for s in (".a", ".b")]
    msg = b"x" * 100
    try:
        p = multiprocessing.Process(target=_sink, args=(name, n))
        p.start()
        start = time.perf_counter()
        for _ in range(n):
            qs[0].send(msg)
        p.join()
        one_way = n / (time.perf_counter() - start)
        rounds = n // 4
        p = multiprocessing.Process(target=_echo_peer, args=(name, rounds))
        p.start()
        start = time.perf_counter()
        for _ in range(rounds):
            qs[0].send(msg)
            qs[1].receive()
        p.join()
        round_trips = rounds / (time.perf_counter() - start)
    finally:
        for q in qs:
            q.unlink()
            q.close()
    return {"one_way_msgs_per_s": round(one_way), "round_trips_per_s": round(round_trips)}


def beanstalkd_drain(jobs: int, clients: int) -> dict[str, Any]:
    """The same drain through beanstalkd -b (binlog) with 4 greenstalk workers."""
    import greenstalk  # type: ignore[import-not-found,unused-ignore]

    binary = shutil.which("beanstalkd")
    if binary is None:
        return {"error": "beanstalkd is not installed (apt-get install beanstalkd)"}
    binlog = tempfile.mkdtemp(prefix="tq-bench-beanstalkd-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-b", binlog])
    try:
        for _ in range(200):
            try:
                greenstalk.Client(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.01)  # waiting for the server to listen
        done = multiprocessing.Value("i", 0)
        workers = [multiprocessing.Process(target=_beanstalk_worker, args=(port, done)) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        per = jobs // clients
        start = time.perf_counter()

        def produce() -> None:
            with greenstalk.Client(("127.0.0.1", port)) as c:
                for i in range(per):
                    c.put(f"task-1 {i}")

        threads = [threading.Thread(target=produce) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while done.value < per * clients:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        for w in workers:
            w.terminate()
        return {"jobs": per * clients, "seconds": round(elapsed, 3), "jobs_per_s": round(per * clients / elapsed)}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(binlog, ignore_errors=True)


def _beanstalk_worker(port: int, done: Any) -> None:
    import greenstalk

    with greenstalk.Client(("127.0.0.1", port)) as c:
        while True:
            job = c.reserve()
            _result = job.body + " processed"
            c.delete(job)
            with done.get_lock():
                done.value += 1


def _percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 of round trips, in microseconds."""
    ordered = sorted(seconds)
    return {"p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
            "p99_us": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e6, 1)}


def one_producer(suite: Suite, jobs: int) -> dict[str, float]:
    """One client submits `jobs` echo jobs one at a time while the workers drain them: first submit to last
    completion, and each submit's round trip."""
    c = suite.client()
    trips = []
    clock = time.perf_counter
    start = clock()
    for i in range(jobs):
        t = clock()
        c.submit("task-1", str(i))
        trips.append(clock() - t)
    while (states := c.status()["states"])["queued"] + states.get("assigned", 0) + states["running"]:  # (as in drain)
        time.sleep(0.002)  # polling the host's counters once the producer is done, as beanstalkd's below
    elapsed = clock() - start
    return {"jobs_per_s": round(jobs / elapsed), **_percentiles(trips)}


def idle_round_trips(suite: Suite, n: int) -> dict[str, float]:
    """Submits to a queue no worker serves: the round trip of one client on a host with nothing else to do."""
    c = suite.client()
    trips = []
    for i in range(n):
        t = time.perf_counter()
        c.submit("task-1", str(i), queue="bench-idle")
        trips.append(time.perf_counter() - t)
    c.cancel_matching(queue="bench-idle")
    return _percentiles(trips)


def fdatasyncs(pid: int, measure: Callable[[], T]) -> tuple[T, int]:
    """`measure()`, and how many fdatasync and fsync calls process `pid` made meanwhile (-1: not counted).

    Counted by `perf stat` on the syscall tracepoints, which costs the traced process nothing measurable
    (strace would stop it at every system call). Needs tracefs, mounted here if it is not.
    """
    tracing = Path("/sys/kernel/tracing")
    if shutil.which("perf") is None or os.geteuid() != 0:
        return measure(), -1
    if not (tracing / "events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], capture_output=True)
    out = tempfile.NamedTemporaryFile(prefix="tq-bench-perf-", delete=False)
    counter = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out.name, "-p", str(pid), "-e",
                                "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf has no readiness signal; it attaches well within this
    try:
        value = measure()
    finally:
        counter.send_signal(signal.SIGINT)
        counter.wait()
    calls = -1
    for line in Path(out.name).read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:") and fields[0].isdigit():
            calls = max(calls, 0) + int(fields[0])
    os.unlink(out.name)
    return value, calls


def _beanstalk_put_loop(port: int, jobs: int) -> list[float]:
    import greenstalk

    trips = []
    clock = time.perf_counter
    with greenstalk.Client(("127.0.0.1", port)) as c:
        for i in range(jobs):
            t = clock()
            c.put(f"task-1 {i}")
            trips.append(clock() - t)
    return trips


class Beanstalkd:
    """beanstalkd with a binlog and `workers` greenstalk workers, for as long as the `with` lasts."""

    def __init__(self, flags: list[str], workers: int) -> None:
        self.flags, self.nworkers = flags, workers

    def __enter__(self) -> Beanstalkd:
        import greenstalk

        binary = shutil.which("beanstalkd")
        if binary is None:
            raise RuntimeError("beanstalkd is not installed (apt-get install beanstalkd)")
        self.binlog = tempfile.mkdtemp(prefix="tq-bench-beanstalkd-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(self.port), "-b", self.binlog,
                                        *self.flags])
        for _ in range(200):
            try:
                greenstalk.Client(("127.0.0.1", self.port)).close()
                break
            except OSError:
                time.sleep(0.01)  # waiting for the server to listen
        self.done = multiprocessing.Value("i", 0)
        self.workers = [multiprocessing.Process(target=_beanstalk_worker, args=(self.port, self.done))
                        for _ in range(self.nworkers)]
        for w in self.workers:
            w.start()
        return self

    def one_producer(self, jobs: int) -> dict[str, float]:
        base = self.done.value
        start = time.perf_counter()
        trips = _beanstalk_put_loop(self.port, jobs)
        while self.done.value < base + jobs:
            time.sleep(0.002)
        return {"jobs_per_s": round(jobs / (time.perf_counter() - start)), **_percentiles(trips)}

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.terminate()
            w.join()
        self.server.terminate()
        self.server.wait()
        shutil.rmtree(self.binlog, ignore_errors=True)


# tq's durability level and the beanstalkd flags that promise as much: `normal` survives a crash of the server
# process, as beanstalkd's binlog does (-b, fsync at most every 50 ms); `full` fsyncs every acknowledged job
# before the acknowledgement, as -b -f0 does.
PEER_OF = {"normal": [], "full": ["-f0"]}


def one_producer_shape(jobs: int, rounds: int, peers: bool) -> dict[str, Any]:
    """One producer, one job at a time, 2 and 4 workers, both durability levels (beside beanstalkd: --peers)."""
    out: dict[str, Any] = {}
    for level in ("normal", "full"):
        for workers in (2, 4):
            tmp = Path(tempfile.mkdtemp(prefix="tq-bench-"))
            suite = Suite(tmp)
            try:
                shipped_config(suite, durability=level)
                host = suite.host(env=unit_environment(REPO / "units/tq-host.service"))
                for i in range(1, workers + 1):
                    suite.worker(str(i), env=unit_environment(REPO / "units/tq-worker@.service"))
                suite.wait_live(workers)
                entry: dict[str, Any] = {"tq": [], "beanstalkd": [], "ratio": []}
                with Beanstalkd(PEER_OF[level], workers) if peers else contextlib.nullcontext() as bean:
                    quiet(suite)
                    _run, syncs = fdatasyncs(host.pid, functools.partial(one_producer, suite, jobs // 5))
                    entry["fdatasync_per_submit"] = round(syncs / (jobs // 5), 3) if syncs >= 0 else None
                    for _ in range(rounds):
                        quiet(suite)
                        run = one_producer(suite, jobs)
                        entry["tq"].append(run)
                        if bean is not None:
                            entry["beanstalkd"].append(bean.one_producer(jobs))
                            entry["ratio"].append(round(run["jobs_per_s"] / entry["beanstalkd"][-1]["jobs_per_s"], 2))
                if workers == 2:
                    quiet(suite)
                    idle_runs = []
                    for _ in range(rounds):
                        run, syncs = fdatasyncs(host.pid, functools.partial(idle_round_trips, suite, 2000))
                        idle_runs.append(run | {"fdatasync_per_submit": round(syncs / 2000, 3) if syncs >= 0 else None})
                    out[f"idle_submit_{level}"] = median_run(idle_runs, "p50_us")
                    quiet(suite)
                    if hasattr(Client, "wait_many"):  # (a bench of an older tq has no wait_many)
                        out[f"batch_wait_many_{level}"] = median_run(
                            [batch_then_wait(suite, jobs) for _ in range(rounds)], "jobs_per_s")
                    out[f"batch_wait_each_{level}"] = median_run(
                        [batch_then_wait(suite, jobs, many=False) for _ in range(rounds)], "jobs_per_s")
                    if level == "full":
                        out["fdatasync_p50_us"] = fdatasync_us(tmp)
            finally:
                suite.close()
                shutil.rmtree(tmp, ignore_errors=True)
            entry["median"] = median_run(entry["tq"], "jobs_per_s")
            if entry["beanstalkd"]:
                entry["beanstalkd_median"] = median_run(entry["beanstalkd"], "jobs_per_s")
                entry["median_ratio"] = sorted(entry["ratio"])[len(entry["ratio"]) // 2]
            out[f"{level}_{workers}_workers"] = entry
    return out


def batch_then_wait(suite: Suite, jobs: int, many: bool = True) -> dict[str, float]:
    """Batches of 100 with submit_many, then one wait_many for every id (`many`; else one wait per id): first
    submit to every result known."""
    c = suite.client()
    start = time.perf_counter()
    ids: list[int] = []
    for i in range(0, jobs, 100):
        ids += c.submit_many([("task-1", [str(j)]) for j in range(i, min(i + 100, jobs))])
    finished = c.wait_many(ids, timeout=120) if many else {i: c.wait(i, timeout=120) for i in ids}
    elapsed = time.perf_counter() - start
    assert len(finished) == jobs and all(j["state"] == "done" for j in finished.values())
    return {"jobs_per_s": round(jobs / elapsed)}


def fdatasync_us(directory: Path, n: int = 500) -> float:
    """p50 of one WAL frame written and fdatasync'd in `directory`: a 24-byte header and a 4 KiB page at the
    WAL's offsets (32 + k * 4120, so a frame spans two file system blocks) over a reused 1 MiB file, as the
    store's WAL is reused after a checkpoint. What one fdatasync of a commit costs there, in microseconds."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    frame = b"x" * 4120
    try:
        for i in range(256):
            os.pwrite(fd, frame, 32 + i * 4120)
        os.fdatasync(fd)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            os.pwrite(fd, frame, 32 + (i % 256) * 4120)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return _percentiles(samples)["p50_us"]


def clients_shape(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The 4-client drain (beside beanstalkd -b, run for run), submit rates, batches, latency, footprint."""
    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-"))
    suite = Suite(tmp)
    n = args.rounds
    peer: list[dict[str, Any]] = []
    try:
        shipped_config(suite)
        host = suite.host(env=unit_environment(REPO / "units/tq-host.service"))
        workers = [suite.worker(str(i), env=unit_environment(REPO / "units/tq-worker@.service"))
                   for i in range(1, WORKERS + 1)]
        suite.wait_live(WORKERS)
        time.sleep(2.0)  # past the host's one-off trim a second after start (see idle after load below)
        results["idle_fresh"] = idle([host, workers[0]], args.idle_seconds)

        def drain_and_peer() -> dict[str, Any]:
            run = drain(suite, args.jobs, 4)
            if args.peers:  # beanstalkd right after, while tq idles: each pair of runs shares the machine's mood
                peer.append(beanstalkd_drain(args.jobs, 4))
            return run

        results["drain"] = median_run(runs(suite, n, drain_and_peer), "jobs_per_s")
        results["submit_1_client"] = median_run(runs(suite, n, lambda: {"per_s": submit_rate(suite, 1, 2000)}),
                                                "per_s")
        results["submit_8_clients"] = median_run(runs(suite, n, lambda: {"per_s": submit_rate(suite, 8, 500)}),
                                                 "per_s")
        batches = runs(suite, n, lambda: batch_rates(suite, 20000))
        results["batch"] = {k: median_run(batches, k)[k] for k in batches[0]}
        results["batch"]["runs"] = batches
        lat = runs(suite, n, lambda: latency(suite, 1000))
        results["latency"] = {k: median_run(lat, k)[k] for k in lat[0]} | {"runs": lat}
        results["tqctl_submit_ms_median"] = tqctl_wall(suite, 20)
        suite.client().wait(suite.client().submit("task-1"), timeout=60)  # the backlog is drained
        # The host gives a burst's memory back 1 s after its last submit or result (host/upkeep.py IDLE_TRIM): idle is
        # measured from 2 s after the load, once that one-off clean-up (a few ms of CPU) is done.
        time.sleep(2.0)
        results["idle_after_load"] = idle([host, workers[0]], args.idle_seconds)
    finally:
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results["raw_posix_ipc"] = raw_posix_ipc(100_000)
    results["drain_vs_raw_one_way"] = round(results["drain"]["jobs_per_s"] / results["raw_posix_ipc"]
                                            ["one_way_msgs_per_s"], 3)
    if peer:
        results["beanstalkd_b"] = median_run(peer, "jobs_per_s") if "jobs_per_s" in peer[0] else peer[0]
        if "jobs_per_s" in results["beanstalkd_b"]:
            results["drain_vs_beanstalkd"] = round(results["drain"]["jobs_per_s"]
                                                   / results["beanstalkd_b"]["jobs_per_s"], 2)
            results["drain_vs_beanstalkd_runs"] = [round(t / b["jobs_per_s"], 2) for t, b in
                                                   zip(results["drain"]["runs_jobs_per_s"], peer, strict=True)]


class Observers:
    """`n` real `tqctl events --follow` processes and (unless `scrape` is false) a `tqctl metrics` every second,
    while a drain runs."""

    def __init__(self, suite: Suite, n: int, follow_args: list[str], before: Callable[[], None],
                 scrape: bool = True) -> None:
        self.suite, self.n, self.follow_args, self.scrape = suite, n, follow_args, scrape
        self.before = before  # once every follower has subscribed, before the first scrape
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop = threading.Event()
        self.scrapes = 0
        self.scrapes_cpu_s = 0.0  # the scrapes' own CPU time (user + system), summed as each ends
        self.thread = threading.Thread(target=self._scrape, daemon=True)

    def __enter__(self) -> Observers:
        argv = [str(REPO / ".venv/bin/tqctl"), "--config", str(self.suite.config), "events", "--follow",
                "--limit", "0", *self.follow_args]
        self.procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=self.suite.env) for _ in range(self.n)]
        c = self.suite.client()
        deadline = time.monotonic() + 120
        while c.metrics()["events"]["subscribers"] < self.n:
            if time.monotonic() > deadline:
                self._end()
                raise RuntimeError(f"bench: {self.n} tqctl events --follow did not all subscribe within 120 s")
            time.sleep(0.05)  # polling the host's count of subscribers until every process has subscribed
        self.before()
        if self.scrape:
            self.thread.start()
        return self

    def _end(self) -> None:
        """SIGTERM, not SIGINT: a background shell starts its commands with SIGINT ignored."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)

    def _scrape(self) -> None:
        """A scrape at once, then one a second (from the start of the one before), until stopped."""
        argv = [str(REPO / ".venv/bin/tqctl"), "--config", str(self.suite.config), "metrics"]
        due = time.monotonic()
        while not self.stop.wait(max(due - time.monotonic(), 0.0)):
            due += 1.0
            self.scrapes += 1  # (counted as it starts: one still running when the drain ends fell in it)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=self.suite.env)
            _, status, usage = os.wait4(proc.pid, 0)  # (its rusage: subprocess.run would not give it)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.scrapes_cpu_s += usage.ru_utime + usage.ru_stime
            if proc.returncode:
                raise subprocess.CalledProcessError(proc.returncode, argv)

    def followers_cpu_s(self) -> float:
        return sum(_run_s(p.pid) for p in self.procs)

    def end_scrapes(self) -> None:
        """No scrape from now on; returns once the one running has ended (it is counted, its CPU with it)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def __exit__(self, *exc: object) -> None:
        self.end_scrapes()
        self._end()
        c = self.suite.client()
        while c.metrics()["events"]["subscribers"]:
            time.sleep(0.05)  # until the host has seen every subscriber go


def observed_shape(args: argparse.Namespace) -> dict[str, Any]:
    """The 4-client drain without and with observers (--subscribers followers and a scrape a second), run for
    run: each pair shares the machine's mood."""
    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-"))
    suite = Suite(tmp)
    follow_args = ["--json"] if args.subscriber_output == "json" else []
    plain: list[dict[str, Any]] = []
    observed: list[dict[str, Any]] = []
    try:
        shipped_config(suite)
        host = suite.host(env=unit_environment(REPO / "units/tq-host.service"))
        for i in range(1, WORKERS + 1):
            suite.worker(str(i), env=unit_environment(REPO / "units/tq-worker@.service"))
        suite.wait_live(WORKERS)

        def host_cpu_s(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            before = _run_s(host.pid)
            return run() | {"host_cpu_s": round(_run_s(host.pid) - before, 3)}

        def plain_drain() -> None:
            settle(suite)
            plain.append(host_cpu_s(lambda: drain(suite, args.observed_jobs, 4)))

        def observed_drain() -> None:
            quiet(suite)
            with Observers(suite, args.subscribers, follow_args, before=lambda: settle(suite)) as obs:
                followers = obs.followers_cpu_s()
                got = host_cpu_s(lambda: drain(suite, args.observed_jobs, 4))
                got["followers_cpu_s"] = round(obs.followers_cpu_s() - followers, 3)
                obs.end_scrapes()
                observed.append(got | {"scrapes": obs.scrapes, "scrapes_cpu_s": round(obs.scrapes_cpu_s, 3)})

        for i in range(args.observed_rounds):  # the order alternates: neither drain always comes first
            for measure in (plain_drain, observed_drain) if i % 2 == 0 else (observed_drain, plain_drain):
                measure()
    finally:
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [round(o["jobs_per_s"] / p["jobs_per_s"], 3) for p, o in zip(plain, observed, strict=True)]
    return {"subscribers": args.subscribers, "output": args.subscriber_output, "plain": plain,
            "observed": observed, "ratios": ratios, "median_ratio": statistics.median(ratios)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--peers", action="store_true", help="also run beanstalkd -b through the drain")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each throughput and latency figure; the median is shown")
    p.add_argument("--one-producer-jobs", type=int, default=10000)
    p.add_argument("--shape", choices=("all", "clients", "one-producer", "observed", "mixed"), default="all",
                   help="clients: the 4-client drain and the other figures; one-producer: one job at a time; "
                        "observed: the drain without and with event followers and a metrics scrape a second; "
                        "mixed: the makespan of `sleep` jobs of mixed length over 4 workers against the ideal")
    p.add_argument("--mixed-jobs", type=int, default=120, help="jobs of the mixed shape's mixed workload")
    p.add_argument("--mixed-seed", type=int, default=26, help="the seed of the mixed workload's durations")
    p.add_argument("--subscribers", type=int, default=200, help="event followers in the observed drain")
    p.add_argument("--observed-rounds", type=int, default=7,
                   help="pairs of drains, without and with the observers (a pair's ratio varies by 10%% on a noisy "
                        "machine even with no observers: the median of 7 is quoted; 7 pairs of 60,000 jobs stay "
                        "under the store's retain_count)")
    p.add_argument("--observed-jobs", type=int, default=60000,
                   help="jobs of each drain in the observed shape: seconds long, so that each holds several "
                        "scrapes and sends to the followers (20,000 drain in about 1 s on a fast day, and 0 or 1 "
                        "of each fell in it by chance)")
    p.add_argument("--subscriber-output", choices=("text", "json"), default="text",
                   help="the followers' tqctl events --follow output (json: the host's lines as they come)")
    args = p.parse_args()
    # tq byte-compiled, as the package installs it (postinst runs py3compile): where PYTHONDONTWRITEBYTECODE is
    # set or the tree is read-only, every tqctl and daemon started here would compile tq from source first.
    compileall.compile_dir(str(REPO / "daemons"), quiet=1)
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release}}
    if int(Path("/proc/sys/fs/mqueue/msg_max").read_text()) < 32:  # the shipped config's host queue depth
        if os.geteuid() != 0:
            sys.exit("bench: fs.mqueue.msg_max is below the shipped config's 32: run as root (it applies "
                     "packaging/sysctl.d/60-tq.conf, as the package does) or raise it with sysctl")
        print("raising the kernel queue limits as the package does: sysctl -p packaging/sysctl.d/60-tq.conf")
        subprocess.run(["sysctl", "-q", "-p", str(REPO / "packaging/sysctl.d/60-tq.conf")], check=True)
    if args.shape in ("all", "clients"):
        clients_shape(args, results)
    if args.shape in ("all", "one-producer"):
        results["one_producer"] = one_producer_shape(args.one_producer_jobs, args.rounds, args.peers)
    if args.shape in ("all", "observed"):
        results["observed"] = observed_shape(args)
    if args.shape in ("all", "mixed"):
        peer = functools.partial(Beanstalkd, PEER_OF["full"], 0) if args.peers else None
        results["mixed"] = makespan.mixed_shape(args.rounds, args.mixed_jobs, args.mixed_seed, shipped_suite, peer)
    print_table(results)
    write_results(results, "bench")
    return 0


def write_results(results: dict[str, Any], name: str) -> None:
    """The figures as .bench/NAME-YYYYMMDD-HHMMSS.json (not committed), and where they went."""
    out = REPO / ".bench"
    out.mkdir(exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {path.relative_to(REPO)}")


def print_table(r: dict[str, Any]) -> None:
    if "drain" in r:
        print_clients(r)
    if "one_producer" in r:
        if "drain" in r:
            print()
        print_one_producer(r["one_producer"])
    if "observed" in r:
        print()
        print_observed(r["observed"])
    if "mixed" in r:
        print()
        makespan.print_mixed(r["mixed"], "beanstalkd -b -f0")


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(n) for n, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def print_clients(r: dict[str, Any]) -> None:
    rows = [
        ("drain, 20k echo jobs, 4 clients, 4 workers", f"{r['drain']['jobs_per_s']} jobs/s"),
        ("durable submit, 1 client", f"{r['submit_1_client']['per_s']} /s"),
        ("durable submit, 8 clients", f"{r['submit_8_clients']['per_s']} /s"),
        ("batch submit, client.submit_many", f"{r['batch']['submit_many_jobs_per_s']} jobs/s"),
        ("batch submit, tqctl submit --batch -", f"{r['batch']['tqctl_batch_jobs_per_s']} jobs/s"),
        ("submit->result latency p50 / p99", f"{r['latency']['p50_ms']} / {r['latency']['p99_ms']} ms"),
        ("tqctl submit (whole process), median", f"{r['tqctl_submit_ms_median']} ms"),
    ]
    for when in ("fresh", "after_load"):
        for name, v in r[f"idle_{when}"].items():
            rows.append((f"idle {name} ({when.replace('_', ' ')}): CPU, RSS",
                         f"{v['cpu_percent']} %, {v['rss_mb']} MB"))
    raw = r["raw_posix_ipc"]
    rows += [("raw posix_ipc one-way, 2 processes", f"{raw['one_way_msgs_per_s']} msgs/s"),
             ("raw posix_ipc round trips", f"{raw['round_trips_per_s']} /s"),
             ("tq drain / raw one-way", f"{r['drain_vs_raw_one_way']}")]
    if "beanstalkd_b" in r:
        b = r["beanstalkd_b"]
        rows.append(("beanstalkd -b drain, same workload", f"{b.get('jobs_per_s', b.get('error'))} jobs/s"))
        if "drain_vs_beanstalkd" in r:
            rows.append(("tq drain / beanstalkd -b (median; each run)",
                         f"{r['drain_vs_beanstalkd']}; {' '.join(map(str, r['drain_vs_beanstalkd_runs']))}"))
    print(f"4 clients (throughput and latency: the median of {len(r['drain']['runs_jobs_per_s'])} runs each)")
    _print_rows(rows)


def print_one_producer(r: dict[str, Any]) -> None:
    """One row per durability level and worker count: tq, beanstalkd beside it, and their ratio per run."""
    print("one producer, one job at a time (the median of the runs; ratios: tq / beanstalkd, each run)")
    rows = []
    for level in ("normal", "full"):
        peer = "beanstalkd -b" + (" -f0" if PEER_OF[level] else "")
        for workers in (2, 4):
            e = r[f"{level}_{workers}_workers"]
            m = e["median"]
            syncs = e.get("fdatasync_per_submit")
            value = (f"{m['jobs_per_s']} jobs/s, submit p50/p99 {m['p50_us']}/{m['p99_us']} us, "
                     f"{'not counted' if syncs is None else syncs} fdatasync/submit")
            if e["beanstalkd"]:
                b = e["beanstalkd_median"]
                value += (f" | {peer}: {b['jobs_per_s']} jobs/s, put p50 {b['p50_us']} us"
                          f" | ratio {e['median_ratio']} ({' '.join(map(str, e['ratio']))})")
            rows.append((f"tq {level}, {workers} workers", value))
        idle_run = r[f"idle_submit_{level}"]
        syncs = idle_run["fdatasync_per_submit"]
        rows.append((f"tq {level}, submit round trip, idle host",
                     f"p50 {idle_run['p50_us']} us, p99 {idle_run['p99_us']} us, "
                     f"{'not counted' if syncs is None else syncs} fdatasync/submit"))
        waits = [f"{r[f'batch_wait_{how}_{level}']['jobs_per_s']} jobs/s {text}" for how, text in
                 (("many", "with one wait_many"), ("each", "with a wait per id")) if f"batch_wait_{how}_{level}" in r]
        rows.append((f"tq {level}, batches of 100 then the results, 2 workers", ", ".join(waits)))
    if "fdatasync_p50_us" in r:
        rows.append(("one WAL frame written + fdatasync in the state dir, p50", f"{r['fdatasync_p50_us']} us"))
    _print_rows(rows)


def print_observed(r: dict[str, Any]) -> None:
    print(f"observed: the 4-client drain without and with {r['subscribers']} `tqctl events --follow` ({r['output']}) "
          "and a `tqctl metrics` every second, run for run")
    _print_rows([
        ("drain without (each run)", " ".join(f"{x['jobs_per_s']}" for x in r["plain"]) + " jobs/s"),
        ("drain with (each run)", " ".join(f"{x['jobs_per_s']}" for x in r["observed"]) + " jobs/s"),
        ("with / without (median; each run)", f"{r['median_ratio']}; {' '.join(map(str, r['ratios']))}"),
        ("scrapes during each drain with", " ".join(str(x["scrapes"]) for x in r["observed"])),
        ("CPU of the scrapes (each drain)", " ".join(f"{x['scrapes_cpu_s']:.2f}" for x in r["observed"]) + " s"),
        ("CPU of the followers (each drain)", " ".join(f"{x['followers_cpu_s']:.2f}" for x in r["observed"]) + " s"),
        ("tq-host's CPU without (each)", " ".join(f"{x['host_cpu_s']:.2f}" for x in r["plain"]) + " s"),
        ("tq-host's CPU with (each)", " ".join(f"{x['host_cpu_s']:.2f}" for x in r["observed"]) + " s"),
    ])


if __name__ == "__main__":
    sys.exit(main())
