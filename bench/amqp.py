"""make bench-amqp: tq's figures across machines, through a RabbitMQ of its own (issue 28).

tq-host runs on this machine with [amqp] queues = ["remote"]; each worker "machine" is a network namespace on a
bridge of its own, with its own hostname (`unshare --uts`: the worker names differ, "1@tqbench-m2") and its own
configuration ([transport] kind = "amqp"), running 4 tq-worker processes. Everything else is the shipped
configuration. The broker (tests/broker.py's recipe) listens on loopback and on the bridge. Figures:

- throughput of Python-handler jobs of 10 ms (the issue's figure) and 100 ms (bench/remote/bench_handlers.py:work,
  a sleep) with 4 workers per machine, for 1, 2 and 3 machines: submit N, wait until none is queued or running;
  with the CPU each part used meanwhile (tq-host, the broker, the workers, anything else), since here every
  "machine" shares this machine's cores;
- no-op jobs end to end (submit N, wait until all are done), tq's 4 remote workers beside Celery's prefork pool
  of 4 processes (bench/remote/bench_celery.py: acks_late, persistent, publisher confirms, rpc:// results;
  Debian's python3-celery run by /usr/bin/python3), in the same namespace, on the same broker, runs alternated;
  tq twice: 100 jobs a submit, and one a submit as Celery's producer sends one task a confirm;
- the CPU of tq-host, the broker and the workers with every remote worker up and no job (their heartbeats);
- the transport's confirmed dispatches per second (bench/amqp_confirms.py's round, on the same broker).

Each figure is the median of --rounds runs (3); the JSON (.bench/amqp-<time>.json) keeps every run and the load
average before each figure (the machine may be shared). Needs root (namespaces, links) and rabbitmq-server.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REMOTE = REPO / "bench" / "remote"  # the workers' modules (not bench/: its amqp.py would hide py-amqp)
sys.path.insert(0, str(REPO / "tests"))

import amqp_confirms  # noqa: E402

from bench import shipped_config, unit_environment, write_results  # noqa: E402
from broker import BIN, Broker  # noqa: E402
from harness import Daemon, Suite, wait_until  # noqa: E402
from tq.client import Client  # noqa: E402

WORKERS_PER_MACHINE = 4
QUEUE = "remote"
CELERY_PYTHON = "/usr/bin/python3"
CLK = os.sysconf("SC_CLK_TCK")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def ticks(pid: int) -> int:
    """A process's CPU time (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def group_ticks(pgrp: int) -> int:
    """The CPU time of a process group's processes (the broker: its script, erl and erl's children)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgrp:
                total += int(fields[11]) + int(fields[12])
    return total


def machine_busy_ticks() -> int:
    """All cores' busy time (not idle, I/O wait or stolen by the hypervisor), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:8]) - values[3] - values[4] - values[7]  # user nice system irq softirq: not steal


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=not check)


class Network:
    """A bridge and `machines` network namespaces on it, with names and a /24 of their own (so that another
    run or test on this machine never meets them); removed on exit, also after a failure."""

    def __init__(self, machines: int) -> None:
        tag = secrets.token_hex(2)
        self.bridge = f"tqb{tag}"
        self.veths = [f"tqb{tag}v{i}" for i in range(1, machines + 1)]  # the host ends (at most 15 bytes)
        self.namespaces = [f"tqbench-{tag}-{i}" for i in range(1, machines + 1)]
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        self.net = next(n for n in (f"10.{random.randrange(100, 250)}.{random.randrange(256)}" for _ in range(50))
                        if f"{n}." not in routes)
        self.address = f"{self.net}.1"  # the bridge's: the broker listens there too

    def __enter__(self) -> Network:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i, (ns, veth) in enumerate(zip(self.namespaces, self.veths, strict=True), 1):
                ip("netns", "add", ns)
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", veth, "master", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.net}.{10 + i}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for ns, veth in zip(self.namespaces, self.veths, strict=True):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("link", "del", veth, check=False)  # at once: `ip netns del` frees the pair only later
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)


class BridgeBroker(Broker):
    """tests/broker.py's broker, listening on the bridge's address as well as on loopback."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.remote_url = self.url.replace("127.0.0.1", address)

    def _write_config(self) -> None:
        super()._write_config()
        with open(os.path.join(self.base, "rabbitmq.conf"), "a") as f:
            f.write(f"listeners.tcp.2 = {self.address}:{self.port}\n")


class Site:
    """tq-host on this machine and the worker machines' tq-worker processes, all torn down on exit."""

    def __init__(self, broker: BridgeBroker, net: Network) -> None:
        self.broker, self.net = broker, net
        self.tmp = Path(tempfile.mkdtemp(prefix="tq-bench-amqp-"))
        self.tmp.chmod(0o755)
        self.suite = Suite(self.tmp)
        self.suite.env["PYTHONPATH"] += os.pathsep + str(REMOTE)
        self.machines = 0
        self.client: Client | None = None
        self.host: Daemon | None = None
        self.workers: list[Daemon] = []

    def __enter__(self) -> Site:
        try:
            self.start_host()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.suite.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_host(self) -> None:
        shipped_config(self.suite)
        text = self.suite.config.read_text()
        self.suite.config.write_text(tasks(text) + f'\n[amqp]\nurl = "{self.broker.url}"\nqueues = ["{QUEUE}"]\n')
        self.host = self.suite.host(env=unit_environment(REPO / "units/tq-host.service"))
        self.client = self.suite.client()

    def machine_config(self, i: int) -> Path:
        """Machine i's configuration: the shipped one with its own runtime directory, the broker on the bridge."""
        d = self.tmp / f"m{i}"
        d.mkdir()
        text = self.suite.config.read_text().split("\n[amqp]")[0]
        text = text.replace(f'"{self.tmp}/tq.sock"', f'"{d}/tq.sock"').replace(f'"{self.tmp}/state"', f'"{d}/state"')
        text = text.replace('queues = ["default"]', f'queues = ["{QUEUE}"]')
        path = d / "tq.toml"
        path.write_text(text + f'\n[transport]\nkind = "amqp"\nurl = "{self.broker.remote_url}"\n')
        return path

    def in_machine(self, i: int, argv: list[str]) -> list[str]:
        """argv run on machine i: in its namespace, with its own hostname (each exec's the next)."""
        return ["ip", "netns", "exec", self.net.namespaces[i - 1], "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', hostname(i), *argv]

    def add_machine(self) -> None:
        self.machines += 1
        i = self.machines
        config = self.machine_config(i)
        env = {**self.suite.env, **unit_environment(REPO / "units/tq-worker@.service")}
        for n in range(1, WORKERS_PER_MACHINE + 1):
            argv = self.in_machine(i, [sys.executable, "-m", "tq.worker", "--config", str(config), str(n)])
            d = Daemon(f"m{i}-worker{n}", argv, env, self.tmp)
            self.suite.daemons.append(d)
            self.workers.append(d)
            try:
                d.ready(timeout=60)
            except AssertionError:
                raise RuntimeError(f"{d.name} did not start:\n{d.text()[-3000:]}") from None
        want = self.machines * WORKERS_PER_MACHINE
        assert self.client is not None
        client = self.client
        wait_until(lambda: sum(w["state"] == "live" and w["transport"] == "amqp" for w in client.workers()) >= want,
                   60, f"{want} remote workers live")

    def cpu(self) -> dict[str, int]:
        assert self.host is not None and self.broker.proc is not None
        return {"tq-host": ticks(self.host.pid), "broker": group_ticks(self.broker.proc.pid),
                "tq-workers": sum(ticks(d.pid) for d in self.workers), "bench": ticks(os.getpid()),
                "machine": machine_busy_ticks()}

    def drain(self, task: str, jobs: int, args: list[str], batch: int = 100) -> dict[str, Any]:
        """`jobs` jobs of `task` on the broker's queue, submitted `batch` at a time (each submit is committed,
        fsync'd with the shipped durability, before tq-host answers): first submit to last done (wait_many)."""
        assert self.client is not None
        c = self.client
        cpu = self.cpu()
        start = time.perf_counter()
        ids: list[int] = []
        for i in range(0, jobs, batch):
            ids += c.submit_many([{"task": task, "args": args, "queue": QUEUE} for _ in range(min(batch, jobs - i))])
        submitted = time.perf_counter()
        finished = c.wait_many(ids, timeout=900)  # one request that tq-host answers when the last is done
        elapsed = time.perf_counter() - start
        cores = {k: round((v - cpu[k]) / CLK / elapsed, 2) for k, v in self.cpu().items()}
        cores["other"] = round(cores["machine"] - sum(v for k, v in cores.items() if k != "machine"), 2)
        failed = [j for j in finished.values() if j["state"] != "done"]
        assert not failed, f"{len(failed)} jobs not done, the first: {failed[0]} (see {self.tmp})"
        return {"jobs": jobs, "batch": batch, "seconds": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed),
                "submit_phase_s": round(submitted - start, 3), "load": load(), "cores_busy": cores}


def hostname(i: int) -> str:
    return f"tqbench-m{i}"


def tasks(config: str) -> str:
    """The bench's tasks, before the shipped catch-all (tasks are matched in file order)."""
    ours = '[tasks.work]\npython = "bench_handlers:work"\n\n[tasks.noop]\npython = "bench_handlers:noop"\n\n'
    return config.replace('[tasks."#"]', ours + '[tasks."#"]', 1)


@contextlib.contextmanager
def celery_worker(site: Site, machine: int) -> Iterator[None]:
    """Celery's worker on `machine`: prefork, 4 processes, the broker on the bridge; stopped (TERM, then KILL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(TQ_BENCH_CELERY_URL=celery_url(site.broker.remote_url), PYTHONPATH=str(REMOTE))
    argv = site.in_machine(machine, [CELERY_PYTHON, "-m", "celery", "-A", "bench_celery", "worker", "--pool=prefork",
                                     f"--concurrency={WORKERS_PER_MACHINE}", "--loglevel=warning",
                                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
    with open(site.tmp / "celery-worker.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=REMOTE, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def celery_url(url: str) -> str:
    return url.rstrip("/") + "//"  # kombu's spelling of the vhost "/"


def celery_run(site: Site, jobs: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(TQ_BENCH_CELERY_URL=celery_url(site.broker.url), PYTHONPATH=str(REMOTE))
    out = subprocess.run([CELERY_PYTHON, str(REMOTE / "bench_celery.py"), str(jobs)], env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the Celery producer failed: {out.stderr.strip()[-2000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load()}


def median_of(runs: list[dict[str, Any]], key: str = "jobs_per_s") -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], f"runs_{key}": [r[key] for r in runs]}


def rounds(n: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return median_of([run() for _ in range(n)])


def scaling_figures(site: Site, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Jobs of each --ms length with 1, 2 ... --machines machines (added one at a time: the workers already up
    stay). A run is --ideal-seconds long at the ideal rate (every worker always in a job)."""
    figures = {ms: {"ms": ms, "workers_per_machine": WORKERS_PER_MACHINE, "by_machines": {}} for ms in args.ms}
    results["work"] = list(figures.values())
    for machines in range(1, args.machines + 1):
        while site.machines < machines:
            site.add_machine()
        for ms in args.ms:
            ideal = machines * WORKERS_PER_MACHINE * 1000 / ms
            jobs = round(ideal * args.ideal_seconds)
            site.drain("work", min(jobs, 200), [str(ms)])  # warm: imports, connections, the first dispatches
            before = load()
            fig = rounds(args.rounds, functools.partial(site.drain, "work", jobs, [str(ms)]))
            fig.update(load_before=before, ideal_jobs_per_s=round(ideal))
            figures[ms]["by_machines"][str(machines)] = fig
            print(f"  {ms} ms, {machines} machine(s): {fig['jobs_per_s']} jobs/s (runs {fig['runs_jobs_per_s']}), "
                  f"cores busy {fig['cores_busy']}", flush=True)


def idle_figure(site: Site, seconds: float, results: dict[str, Any]) -> None:
    """What the remote workers cost when nothing runs: heartbeats (1 s) through the broker to tq-host."""
    cpu = site.cpu()
    time.sleep(seconds)  # the measurement window
    cores = {k: round((v - cpu[k]) / CLK / seconds, 3) for k, v in site.cpu().items() if k != "bench"}
    results["idle"] = {"workers": len(site.workers), "seconds": seconds, "cores_busy": cores}
    print(f"  idle, {len(site.workers)} remote workers: cores busy {cores}", flush=True)


def versus_celery(site: Site, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """No-op jobs: tq's 4 remote workers on machine 1 beside Celery's 4 processes there, runs alternated. tq twice:
    submitted 100 a call (its client API's submit_many), and one a call as Celery's producer sends (each send
    waits for the broker's confirm)."""
    runs: dict[str, list[dict[str, Any]]] = {"tq": [], "tq_one_per_submit": [], "celery": []}
    before = load()
    site.drain("noop", 200, [])  # warm
    with celery_worker(site, 1):
        for _ in range(args.rounds):
            runs["tq"].append(site.drain("noop", args.noop_jobs, []))
            runs["tq_one_per_submit"].append(site.drain("noop", args.noop_jobs, [], batch=1))
            runs["celery"].append(celery_run(site, args.noop_jobs))
            print("  " + ", ".join(f"{name} {r[-1]['jobs_per_s']} jobs/s" for name, r in runs.items()), flush=True)
    results["noop"] = {"workers": WORKERS_PER_MACHINE, "jobs": args.noop_jobs, "load_before": before,
                       **{name: median_of(r) for name, r in runs.items()}}


def confirm_figures(broker: Broker, args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["confirms"] = []
    for window in (64, 1000):
        before = load()
        runs = [amqp_confirms.one_round(broker.url, window, args.confirm_messages) for _ in range(args.rounds)]
        fig = {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        results["confirms"].append({"window": window, "messages": args.confirm_messages, "load_before": before,
                                    **fig, "runs_confirmed_per_s": [round(r["confirmed_per_s"]) for r in runs]})


def print_table(r: dict[str, Any]) -> None:
    print(f"\nload average at the start: {r['load_at_start']}  ({r['machine']['cores']} cores)")
    for w in r.get("work", []):
        print(f"\n{w['ms']} ms Python jobs, {w['workers_per_machine']} workers per machine (median of runs; cores busy "
              "in that run: tq-host, broker, tq-workers, anything else, the machine)")
        print(f"{'machines':>8}  {'jobs':>6}  {'jobs/s':>7}  {'ideal':>6}  {'x 1 machine':>11}  "
              f"{'cores busy':<26}  runs")
        first = w["by_machines"].get("1", {}).get("jobs_per_s")
        for m, fig in w["by_machines"].items():
            ratio = f"{fig['jobs_per_s'] / first:.2f}" if first else "-"
            c = fig["cores_busy"]
            busy = f"{c['tq-host']} {c['broker']} {c['tq-workers']} {c['other']} = {c['machine']}"
            print(f"{m:>8}  {fig['jobs']:>6}  {fig['jobs_per_s']:>7}  {fig['ideal_jobs_per_s']:>6}  {ratio:>11}  "
                  f"{busy:<26}  {fig['runs_jobs_per_s']}")
    if "noop" in r:
        n = r["noop"]
        print(f"\nno-op jobs end to end, {n['workers']} worker processes, {n['jobs']} jobs a run (median of runs)")
        for name, label in (("tq", "tq, 100 a submit"), ("tq_one_per_submit", "tq, 1 a submit"),
                            ("celery", "Celery, 1 a send")):
            fig = n[name]
            print(f"{label:>17}  {fig['jobs_per_s']:>6} jobs/s  (submit phase {fig['submit_phase_s']:6.3f} s)  "
                  f"{fig['runs_jobs_per_s']}")
        print(f"tq / Celery: {n['tq']['jobs_per_s'] / n['celery']['jobs_per_s']:.2f} (100 a submit), "
              f"{n['tq_one_per_submit']['jobs_per_s'] / n['celery']['jobs_per_s']:.2f} (1 a submit)")
    if "idle" in r:
        i = r["idle"]
        print(f"\nidle, {i['workers']} remote workers, {i['seconds']} s: cores busy " +
              ", ".join(f"{k} {v}" for k, v in i["cores_busy"].items()))
    for c in r.get("confirms", []):
        print(f"\ntransport, window {c['window']:>4}: {c['confirmed_per_s']:.0f} confirmed sends/s "
              f"({c['send_cpu_us']:.0f} us CPU each), {c['taken_per_s']:.0f} taken/s ({c['take_cpu_us']:.0f} us each)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--machines", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ms", type=lambda v: [int(x) for x in v.split(",")], default=[10, 100],
                   help="lengths of the scaling figure's jobs, comma-separated (10: the issue's; 100: a load this "
                        "machine's CPU does not bound)")
    p.add_argument("--ideal-seconds", type=float, default=5.0,
                   help="a scaling run's jobs: as many as the workers would do in this time at the ideal rate")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="the window of the idle figure (CPU with every remote worker up and no job)")
    p.add_argument("--noop-jobs", type=int, default=2000)
    p.add_argument("--confirm-messages", type=int, default=10000)
    p.add_argument("--shape", choices=("all", "scaling", "celery", "confirms"), default="all")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-amqp: needs root (network namespaces and links for the worker machines)")
    if not os.path.exists(f"{BIN}/rabbitmq-server"):
        sys.exit(f"bench-amqp: needs rabbitmq-server ({BIN}; apt-get install rabbitmq-server)")
    if args.shape in ("all", "celery") and subprocess.run([CELERY_PYTHON, "-c", "import celery"],
                                                          capture_output=True).returncode:
        sys.exit("bench-amqp: needs Debian's python3-celery for the comparison (apt-get install python3-celery)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a TERM still tears everything down (the `with`s)
    compileall.compile_dir(str(REPO / "daemons"), quiet=1)
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
                               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_at_start": os.getloadavg()}
    print(f"load average at the start: {results['load_at_start']}", flush=True)
    machines = args.machines if args.shape in ("all", "scaling") else 1
    with Network(machines) as net, BridgeBroker(net.address) as broker:
        if args.shape in ("all", "scaling", "celery"):
            with Site(broker, net) as site:
                if args.shape in ("all", "celery"):
                    site.add_machine()
                    print("no-op jobs, tq beside Celery:", flush=True)
                    versus_celery(site, args, results)
                if args.shape in ("all", "scaling"):
                    print("jobs of " + ", ".join(f"{ms} ms" for ms in args.ms) + ":", flush=True)
                    scaling_figures(site, args, results)
                    idle_figure(site, args.idle_seconds, results)
        if args.shape in ("all", "confirms"):
            confirm_figures(broker, args, results)
    print_table(results)
    write_results(results, "amqp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
