"""Does a big store slow tq? Durable submits from one client, and a 4-client drain through 4 workers, with an
empty store and with N finished jobs (none aged). With N at retain_count (1,000,000), every job the drain
finishes is one too many: the drain measures pruning a full store as well (it once fell to 150 jobs/s).

    python bench/store_size.py --finished 1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench import drain, quiet
from harness import temporary_suite
from tq.host.records import JobRecord
from tq.host.store import Store


def fill(state_dir: Path, finished: int) -> None:
    """Write `finished` done jobs straight into the store, as months of use would leave them."""
    store = Store(str(state_dir))
    now = time.time()
    rows = ((f"task-{i % 50}", '["arg"]', "default", 0, "done", 1, 3, 30.0, 1.0, 300.0, "1", "task processed",
             now - 3600, now - 3600, now - 3600) for i in range(finished))
    store.db.execute("BEGIN")
    store.db.executemany(
        "INSERT INTO jobs (task, args, queue, priority, state, attempts, retries, timeout, backoff, backoff_max,"
        " worker, result, created_at, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    store.db.execute("COMMIT")
    store.close()
    assert JobRecord  # the columns above are JobRecord's


def submit_rate(finished: int, submits: int, rounds: int) -> dict[str, float]:
    with temporary_suite() as suite:
        suite.write_config("")  # default retention keeps 1,000,000 finished jobs
        if finished:
            fill(suite.dir / "state", finished)
        suite.host()
        c = suite.client()
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(submits):
                c.submit("task-1", str(i))
            rates.append(submits / (time.perf_counter() - start))
        return {"finished_jobs": finished, "submits_per_s_median": round(statistics.median(rates)),
                "min": round(min(rates)), "max": round(max(rates))}


def drain_rate(finished: int, jobs: int, rounds: int) -> dict[str, float]:
    with temporary_suite() as suite:
        suite.write_config("")
        if finished:
            fill(suite.dir / "state", finished)
        suite.start(workers=4)
        rates = []
        for _ in range(rounds):
            quiet(suite)
            rates.append(drain(suite, jobs, 4)["jobs_per_s"])
        return {"finished_jobs": finished, "jobs_per_s_median": round(statistics.median(rates)),
                "min": round(min(rates)), "max": round(max(rates))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finished", type=int, default=1_000_000)
    p.add_argument("--submits", type=int, default=2000)
    p.add_argument("--drain-jobs", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    out: dict[str, dict[str, object]] = {}
    for name, measure, key in (("submit", lambda n: submit_rate(n, args.submits, args.rounds), "submits_per_s_median"),
                               ("drain", lambda n: drain_rate(n, args.drain_jobs, args.rounds), "jobs_per_s_median")):
        empty, full = measure(0), measure(args.finished)
        out[name] = {"empty": empty, "full": full, "ratio": round(full[key] / empty[key], 3)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
