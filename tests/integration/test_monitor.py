"""The worker monitor on real processes: a real tq-host and tq-worker, the figures carried by the worker's
heartbeats (every 100 ms here), shown by `tqctl workers` and `tqctl workers --json`."""

from __future__ import annotations

import json
import re
from typing import Any

from harness import Suite, wait_until


def _worker(suite: Suite, instance: str = "1") -> dict[str, Any]:
    (w,) = [w for w in suite.client().workers() if w["instance"] == instance]
    return w


def test_workers_show_the_figures_the_counts_and_the_running_commands_process_tree(suite: Suite) -> None:
    suite.write_config('\n[tasks.tree]\ncommand = ["sh", "-c", "sleep 30 & sleep 30 & wait"]\n'
                       '[tasks.bad]\ncommand = ["/bin/false"]\nretries = 0\n', heartbeat="100ms")
    _host, (w1,) = suite.start(workers=1)
    c = suite.client()
    assert c.wait(c.submit("hello"), timeout=10)["state"] == "done"
    assert c.wait(c.submit("bad"), timeout=10)["state"] == "dead"

    def counted() -> dict[str, Any] | None:
        m = _worker(suite)["monitor"]
        return m if m and (m["jobs_done"], m["jobs_failed"]) == (1, 1) else None

    wait_until(counted, what="a heartbeat with one job done and one failed")

    jid = c.submit("tree")

    def tree_seen() -> dict[str, Any] | None:
        job = (_worker(suite)["monitor"] or {}).get("job")
        return job if job and job["id"] == jid and (job.get("tree") or {}).get("processes") == 3 else None

    wait_until(tree_seen, what="the running job with sh and its two sleeps")
    r = suite.tqctl("workers", "--json")
    assert r.returncode == 0, r.stderr
    (w,) = json.loads(r.stdout)
    m = w["monitor"]
    assert w["state"] == "live" and w["pid"] == w1.pid and w["running"] == jid
    assert m["rss_bytes"] > 1 << 20 and m["fds"] > 3 and 0 < m["uptime_seconds"] < 120
    assert m["cpu_seconds"] > 0 and m["cpu_percent"] is not None and 0 <= m["sampled_ago"] < 5
    assert (m["jobs_done"], m["jobs_failed"]) == (1, 1)
    job = m["job"]
    assert (job["id"], job["task"], job["attempt"]) == (jid, "tree", 1) and job["elapsed_seconds"] > 0
    assert job["tree"]["processes"] == 3 and job["tree"]["rss_bytes"] > 1 << 20
    assert job["tree"]["cpu_seconds"] >= 0 and job["tree"]["cpu_percent"] is not None

    table = suite.tqctl("workers")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["WORKER", "MACHINE", "STATE", "PID", "QUEUES", "UP", "RSS", "CPU", "FDS", "DONE",
                              "FAILED", "JOB", "SEEN"]
    machine = c.workers()[0]["machine"]
    assert re.match(rf"1 +{re.escape(machine)} +live +{w1.pid} +default +\S+ +[\d.]+M +[\d.]+s \d+% +\d+ +1 +1 "
                    rf"+{jid} tree [\d.]+s, 3 procs [\d.]+[KM] cpu [\d.]+s +[\d.]+s ago$", row), row

    c.cancel(jid)  # stopped while it ran: a failed attempt on this worker
    assert c.wait(jid, timeout=10)["state"] == "cancelled"

    def idle() -> dict[str, Any] | None:
        m = _worker(suite)["monitor"]
        return m if m and m["job"] is None and (m["jobs_done"], m["jobs_failed"]) == (1, 2) else None

    wait_until(idle, what="an idle heartbeat counting the cancelled attempt as failed")
