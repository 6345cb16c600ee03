"""What durability costs: submit rate with host.durability = "full" (fsync before ack) and "normal".

    python bench/durability.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Suite, temporary_suite


def rate(suite: Suite, clients: int, submits: int) -> float:
    """Submits per second from `clients` concurrent clients, each submitting one job at a time."""
    conns = [suite.client() for _ in range(clients)]
    for c in conns:
        c.status()  # connected before the clock starts
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [c.submit("task-1", str(i)) for i in range(submits)])
               for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * submits / (time.perf_counter() - start)


def measure(durability: str, rounds: int, submits: int) -> dict[str, float]:
    with temporary_suite() as suite:
        suite.write_config("", host=f'durability = "{durability}"')
        suite.host()
        one = [rate(suite, 1, submits) for _ in range(rounds)]
        eight = [rate(suite, 8, submits // 4) for _ in range(rounds)]
        return {"durability": durability, "submits_per_s_1_client": round(statistics.median(one)),
                "submits_per_s_8_clients": round(statistics.median(eight))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--submits", type=int, default=1000)
    args = p.parse_args()
    print(json.dumps([measure(d, args.rounds, args.submits) for d in ("full", "normal")], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
