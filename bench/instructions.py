"""Instructions per job: tq-host's (or one worker's) CPU work, counted by callgrind, not timed.

    python bench/instructions.py                       # this checkout: host per drained job, per durable
                                                       # submit, and a worker per job
    python bench/instructions.py --shape drain --shape followed  # tq-host per job without and with 200
                                                       # event followers connected (the stream's own cost)
    python bench/instructions.py --shape drain --shape gateway  # ... and with 200 SSE clients through tq-gateway
                                                       # and its /metrics scraped every second
    python bench/instructions.py --tree ../old --tree .  # two checkouts, run for run (their daemons/)

On a shared, noisy machine a throughput figure moves 10-20 % between runs of the same code; an instruction
count moves well under 1 % (valgrind counts what the process executes, whatever else the machine does). So a
change of a few per cent in the cost of a job shows here when `make bench` cannot show it either way.

One daemon runs under `valgrind --tool=callgrind`; the others run natively. The count is zeroed after a
warm-up drain and read after the measured one (callgrind_control), so start-up and imports are not in it.
The job events go to the journal with job_events = "failures": in the shipped "all", a daemon logs up to 200
lines a second, a cost per second, not per job, that would grow with valgrind's slowness. What is left is
per job, plus the little the daemons do per second (heartbeats), which a longer --jobs makes smaller.

Needs valgrind (Debian: valgrind). A drain of 10,000 jobs takes 15-25 s under callgrind.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import Scraper, SseFollowers, make_token

from bench import REPO, WORKERS, Observers, drain, quiet, shipped_config, submit_rate, unit_environment
from harness import Daemon, Suite

SHAPES = ("drain", "submit", "worker", "followed", "gateway")
DEFAULT_SHAPES = SHAPES[:3]
FOLLOWERS = 200  # `tqctl events --follow` connected through the "followed" drain (the observed shape's number)


def counted(suite: Suite, name: str, module: str, args: list[str], env: dict[str, str]) -> tuple[Daemon, str]:
    """A daemon started under callgrind (collecting from the start; zeroed later), and its output's pattern."""
    out = str(suite.dir / f"callgrind-{name}.out")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", sys.executable, "-m", module,
            "--config", str(suite.config), *args]
    d = Daemon(name, argv, {**suite.env, **env}, suite.dir)
    suite.daemons.append(d)
    d.ready(timeout=300)  # (imports under valgrind take 10-30 s)
    return d, out


@contextlib.contextmanager
def gateway_observers(suite: Suite) -> Iterator[None]:
    gateway = suite.gateway()
    token = make_token(suite)
    with SseFollowers(gateway, token, FOLLOWERS), Scraper(gateway, token):
        yield


def instructions(pid: int, out: str) -> int:
    """The instructions since the last zeroing: callgrind_control dumps them, the newest dump says."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dump = max(glob.glob(f"{out}.*"), key=os.path.getmtime)
    found = re.search(r"^(?:summary|totals): (\d+)", Path(dump).read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{dump}: no instruction total")
    return int(found.group(1))


def measure(tree: Path, shape: str, jobs: int) -> dict[str, Any]:
    """One run: the daemons of `tree`, the counted one under callgrind; instructions per job."""
    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-instr-"))
    suite = Suite(tmp)
    code = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(tree / "daemons")])}
    host_env = {**unit_environment(REPO / "units/tq-host.service"), **code}
    worker_env = {**unit_environment(REPO / "units/tq-worker@.service"), **code}
    try:
        shipped_config(suite, tree=tree)
        suite.config.write_text(suite.config.read_text().replace('job_events = "all"', 'job_events = "failures"'))
        if shape == "worker":  # the one worker, counted; the host native
            suite.host(env=host_env)
            daemon, out = counted(suite, "worker1", "tq.worker", ["1"], worker_env)
            suite.wait_live(1, timeout=120)
        else:
            daemon, out = counted(suite, "host", "tq.host", [], host_env)
            for i in range(1, WORKERS + 1):
                suite.worker(str(i), env=worker_env)
            suite.wait_live(WORKERS, timeout=120)
        quiet(suite)
        drain(suite, max(jobs // 4, 4 * 100), 4)  # warm-up: caches, the store's pages, the first GC passes
        quiet(suite)
        followers: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if shape == "followed":  # connected before the count is zeroed: what they cost per job is counted
            followers = Observers(suite, FOLLOWERS, [], before=lambda: None, scrape=False)
        elif shape == "gateway":  # 200 SSE clients through one tq-gateway, and its /metrics scraped every second
            followers = gateway_observers(suite)
        with followers:
            subprocess.run(["callgrind_control", "-z", str(daemon.pid)], check=True, capture_output=True)
            started = time.monotonic()
            if shape == "submit":
                submit_rate(suite, 1, jobs)  # one client, each submit acknowledged (fsync'd) before the next
            else:
                drain(suite, jobs, 4)
            quiet(suite)
            seconds = time.monotonic() - started
            total = instructions(daemon.pid, out)
        daemon.signal(signal.SIGTERM)
        daemon.wait(120)
        return {"tree": str(tree), "shape": shape, "jobs": jobs, "instructions_per_job": round(total / jobs),
                "seconds": round(seconds, 1)}  # (under callgrind: a cost per second weighs that much more per job)
    finally:
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path,
                        help="a checkout whose daemons/ to count (repeat to compare, run for run; default: this)")
    parser.add_argument("--shape", action="append", choices=SHAPES,
                        help="drain: tq-host per job of a 4-client drain; submit: tq-host per durable submit of "
                             "one client; worker: the only worker per job; followed: tq-host per job of the "
                             f"drain with {FOLLOWERS} `tqctl events --follow` connected (default: the first three)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs counted per run (submit: a fifth)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each shape and tree")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [t.resolve() for t in args.tree or [REPO]]
    results = []
    for shape in args.shape or DEFAULT_SHAPES:
        jobs = args.jobs // 5 if shape == "submit" else args.jobs // 2 if shape == "worker" else args.jobs
        for _ in range(args.runs):
            for tree in trees:
                r = measure(tree, shape, jobs)
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"\n{'shape':8} {'tree':40} instructions per job (each run)")
    for shape in args.shape or DEFAULT_SHAPES:
        for tree in trees:
            counts = [r["instructions_per_job"] for r in results if r["shape"] == shape and r["tree"] == str(tree)]
            print(f"{shape:8} {str(tree)[-40:]:40} {' '.join(f'{c:,}' for c in counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
