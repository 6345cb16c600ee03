"""The bounded chaos run inside `make test`: 5,000 jobs, 200 faults (`make chaos` runs a long one)."""

from __future__ import annotations

import json

from chaos import Chaos
from harness import Suite


def test_chaos_no_acknowledged_job_lost_or_completed_twice(suite: Suite) -> None:
    report = Chaos(suite, jobs=5000, faults=200, clients=4, seed=4242).run()
    print(json.dumps(report.__dict__))
    assert sum(report.faults.values()) >= 200
    assert report.jobs_acknowledged >= 5000
    assert report.lost == 0
    assert report.double_completions == 0
    assert report.done_without_execution == 0
