"""tqctl's rendering of times (tq.ctl.render) from what tq-host answers: a job stored before tq-host bounded run
times (far past the year 9999, or long before the epoch) is shown, never a traceback; and a submit --wait that
fails after the submit names the job that stays submitted."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest

from tq import ctl
from tq.client import Refused
from tq.ctl import jobs, options, render

ODD_TIMES = [1e308, 1e300, 1e20, -1e20, -1e308]


class OneJob:
    """A stand-in for the client: `get` answers with one job."""

    def __init__(self, **fields: Any) -> None:
        self.job = {"id": 7, "task": "a", "args": [], "payload": None, "queue": "default", "priority": 0,
                    "state": "delayed", "attempts": 0, "retries": 3, "timeout": 60.0, "handler": None,
                    "created_at": time.time(), **fields}

    def get(self, jid: int) -> dict[str, Any]:
        return self.job


@pytest.mark.parametrize("run_at", ODD_TIMES)
def test_show_of_a_job_with_a_time_out_of_range_prints_the_number(run_at: float, capsys: Any) -> None:
    code = jobs._cmd_show(OneJob(run_at=run_at), argparse.Namespace(id=7), False)  # type: ignore[arg-type]
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run_at:")]
    assert code == 0 and shown == [f"run_at:      {run_at:.0f} seconds since the epoch"], shown


def test_a_time_in_range_is_local_time_and_how_far() -> None:
    now = time.time()
    assert render.moment(now - 7200).endswith("(2h ago)")
    assert render.moment(now + 3 * 86400 + 60).endswith("(in 3d)")
    assert render.local_time(None) == "-"
    assert render.local_time(0, "%Y") in ("1970", "1969")


@pytest.mark.parametrize("text", ["1969-12-31T23:59:59+00:00", "1900-01-01T00:00:00+00:00"])
def test_at_before_the_epoch_is_a_time_past(text: str) -> None:
    assert options.iso_time(text) < 0


class WaitRefused:
    """A stand-in for a remote client whose gateway refuses every wait (as one with max_wait = "0" did)."""

    def submit_spec(self, spec: dict[str, Any]) -> tuple[int, bool]:
        return 41, False

    def wait(self, jid: int, timeout: float | None = None) -> dict[str, Any]:
        raise Refused("wait: at most 0s ([gateway] max_wait)")


def test_submit_wait_refused_after_the_submit_names_the_job(capsys: Any) -> None:
    args = ctl.build_parser().parse_args(["submit", "a", "--wait"])
    with pytest.raises(Refused, match=r"; job 41 stays submitted \(tqctl result --wait 41\)$"):
        jobs._cmd_submit(WaitRefused(), args, False)  # type: ignore[arg-type]
