"""Chaos run: tq-host and 4 workers under random kill -9, SIGSTOP/SIGCONT and SIGTERM while several
clients submit jobs; then every acknowledged job must be done exactly once.

Completions are counted by a trigger in the store itself (every committed transition to 'done'), and
executions by the task handler, which appends the job's tag to a file each time it runs.

    python tests/reliability/chaos.py --jobs 50000 --faults 2000     # make chaos
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Daemon, Suite, temporary_suite, wait_until
from tq.client import Client, TqError

WORKERS = 4
# Chaos kills workers under jobs over and over: a lost attempt counts (a poison job ends dead), so the
# chaos task has attempts to spare, and a short backoff.
TASK = ('\n[tasks.rec]\npython = "tq_test_handlers:record"\nretries = 1000\nbackoff = "10ms"\n'
        '[log]\njob_events = "failures"\n')
TRIGGER = """
CREATE TABLE IF NOT EXISTS chaos_done (id INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS chaos_count_done AFTER UPDATE OF state ON jobs WHEN NEW.state = 'done'
BEGIN INSERT INTO chaos_done VALUES (NEW.id); END;
"""


@dataclass
class Report:
    jobs_acknowledged: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    double_completions: int = 0
    done_without_execution: int = 0
    executions: int = 0
    duplicate_executions: int = 0
    unacknowledged_jobs_in_store: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.double_completions == 0 and self.done_without_execution == 0


class Chaos:
    def __init__(self, suite: Suite, jobs: int, faults: int, clients: int, seed: int) -> None:
        self.suite, self.jobs, self.faults_wanted, self.clients = suite, jobs, faults, clients
        self.rng = random.Random(seed)
        self.acked: dict[str, int] = {}  # tag -> job id
        self.lock = threading.Lock()
        self.faults: collections.Counter[str] = collections.Counter()
        self.host: Daemon | None = None
        self.workers: dict[str, Daemon] = {}
        self.stopped: dict[str, float] = {}  # worker -> when to SIGCONT
        self.give_up = threading.Event()

    def setup(self) -> None:
        s = self.suite
        s.write_config(TASK, lease="1s", heartbeat="100ms")
        first = s.host()
        first.signal(signal.SIGTERM)
        first.wait()
        db = sqlite3.connect(s.dir / "state" / "tq.sqlite3")
        db.executescript(TRIGGER)
        db.close()
        self.host = s.host()
        for i in range(1, WORKERS + 1):
            self.workers[str(i)] = s.worker(str(i))
        s.wait_live(WORKERS)

    def submitter(self, k: int) -> None:
        c = self.suite.client()
        per = self.jobs // self.clients
        pace = self.faults_wanted * 0.08 / max(per, 1)  # spread the jobs over the fault schedule
        seq = 0
        while seq < per and not self.give_up.is_set():
            time.sleep(self.rng.uniform(0, 2 * pace))
            batch = 1 if self.rng.random() < 0.7 else min(20, per - seq)
            tags = [f"c{k}-{seq + i}-{self.rng.randrange(1 << 30)}" for i in range(batch)]
            try:
                ids = c.submit_many([("rec", [t]) for t in tags])
            except TqError:
                time.sleep(0.01)  # host down: a client retries (with a new tag: the old job may exist)
                continue
            with self.lock:
                self.acked.update(zip(tags, ids, strict=True))
            seq += batch

    def inject(self) -> None:
        """One random fault, restarting what it stopped as systemd would."""
        kind = self.rng.choice(["host-kill", "host-term", "worker-kill", "worker-kill", "worker-term",
                                "worker-stop", "worker-stop"])
        name = self.rng.choice(sorted(self.workers))
        if kind == "host-kill" or kind == "host-term":
            assert self.host is not None
            self.host.signal(signal.SIGKILL if kind == "host-kill" else signal.SIGTERM)
            self.host.wait(30)
            self.host = self.suite.host()
        elif name in self.stopped:
            return
        elif kind == "worker-stop":
            self.workers[name].signal(signal.SIGSTOP)
            self.stopped[name] = time.monotonic() + self.rng.uniform(0.05, 2.0)  # past the 1s lease at times
        else:
            w = self.workers[name]
            w.signal(signal.SIGKILL if kind == "worker-kill" else signal.SIGTERM)
            w.wait(30)
            self.workers[name] = self.suite.worker(name)
        self.faults[kind] += 1

    def resume_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for name, when in list(self.stopped.items()):
            if force or now >= when:
                self.workers[name].signal(signal.SIGCONT)
                del self.stopped[name]

    def run(self) -> Report:
        start = time.monotonic()
        self.setup()
        threads = [threading.Thread(target=self.submitter, args=(k,)) for k in range(self.clients)]
        for t in threads:
            t.start()
        deadline = start + 120 + self.faults_wanted * 0.5
        while sum(self.faults.values()) < self.faults_wanted or any(t.is_alive() for t in threads):
            if time.monotonic() > deadline:
                self.give_up.set()
                raise AssertionError(f"chaos run stuck: {len(self.acked)} of {self.jobs} jobs acknowledged, "
                                     f"faults {dict(self.faults)}")
            time.sleep(self.rng.uniform(0.005, 0.06))  # the fault schedule, not a synchronisation
            self.resume_due()
            if sum(self.faults.values()) < self.faults_wanted:
                self.inject()
        for t in threads:
            t.join()
        self.resume_due(force=True)
        return self.check(start)

    def check(self, start: float) -> Report:
        c = self.suite.client()
        ids = sorted(self.acked.values())
        wait_until(lambda: _all_final(c, ids), timeout=300, what="every acknowledged job to finish")
        states = dict(self.suite.store_rows("SELECT id, state FROM jobs"))
        done_counts = collections.Counter(i for (i,) in self.suite.store_rows("SELECT id FROM chaos_done"))
        executions = collections.Counter(self.suite.executions())
        report = Report(jobs_acknowledged=len(ids), faults=dict(self.faults))
        report.lost = sum(1 for i in ids if states.get(i) != "done")
        report.double_completions = sum(1 for n in done_counts.values() if n > 1)
        report.done_without_execution = sum(1 for tag, i in self.acked.items() if executions[tag] == 0)
        report.executions = sum(executions.values())
        report.duplicate_executions = sum(n - 1 for n in executions.values() if n > 1)
        report.unacknowledged_jobs_in_store = len(states) - len(ids)
        report.seconds = round(time.monotonic() - start, 1)
        return report


def _all_final(c: Client, ids: list[int]) -> bool:
    st = c.status()["states"]
    open_jobs = st["queued"] + st["assigned"] + st["running"] + st["delayed"] + st["failed"]
    return bool(open_jobs == 0 and st["done"] >= len(ids))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--faults", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()
    with temporary_suite() as suite:
        report = Chaos(suite, args.jobs, args.faults, args.clients, args.seed).run()
    print(json.dumps({"seed": args.seed, **report.__dict__}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
