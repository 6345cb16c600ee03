"""Bad input to tqctl, as a user types it: each is one line on stderr and the exit status the README lists for
it (2 usage or refused, 5 not found), never a traceback, never exit 1 (a job failed) and never a silent exit 0.
Real tq-host (no workers: nothing here needs a job to run)."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import Suite
from tq.client import Refused

BEYOND_64_BITS = "99999999999999999999999"


def tqctl(suite: Suite, *args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """tqctl with arguments that may be bytes (not UTF-8), as a shell passes them."""
    argv: list[str | bytes] = [sys.executable, "-m", "tq.ctl", "--config", str(suite.config), *args]
    r = subprocess.run(argv, env=suite.env, capture_output=True, timeout=60, input=stdin)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def refused(r: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    """Exit `status` with one line on stderr that holds each of `words`."""
    assert r.returncode == status and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and all(w in r.stderr for w in words), (words, r.stderr)


def test_a_bad_then_batch_file_or_non_utf8_argument_is_a_usage_error(suite: Suite, tmp_path: Path) -> None:
    suite.host()
    refused(tqctl(suite, "submit", "--then", 'nosuch "unbalanced', "x"), 2, "--then", "No closing quotation")
    refused(tqctl(suite, "submit", "--batch", "/nonexistent"), 2, "/nonexistent", "No such file or directory")
    refused(tqctl(suite, "submit", "--batch", str(tmp_path)), 2, str(tmp_path), "Is a directory")
    refused(tqctl(suite, "submit", b"\xff"), 2, "not UTF-8", "\\xff")
    refused(tqctl(suite, "submit", "x", b"a\xffb"), 2, "not UTF-8", "a\\xffb")
    refused(tqctl(suite, "submit", "x", "--payload", b"\xff"), 2, "not UTF-8")
    refused(tqctl(suite, "submit", "x", "--payload", "-", stdin=b"\xff\n"), 2, "--payload -", "not UTF-8")
    batch = tmp_path / "jobs.jsonl"
    batch.write_bytes(b'{"task": "t"}\n{"task": "\xff"}\n')
    refused(tqctl(suite, "submit", "--batch", str(batch)), 2, f"{batch}: line 2: not UTF-8")
    refused(tqctl(suite, "submit", "--batch", "-", stdin=b'{"task": "t", "args": ["\\udcff"]}\n'), 2, "UTF-8")
    assert suite.client().list_jobs() == []  # none of them submitted anything


def test_an_unknown_command_lists_the_commands_but_not_the_completion_s_own(suite: Suite) -> None:
    r = tqctl(suite, "monitor")
    refused(r, 2, "invalid choice: 'monitor' (choose from 'submit', ", "'config')")
    assert "_complete" not in r.stderr, r.stderr


def test_an_id_beyond_64_bits_is_no_job(suite: Suite) -> None:
    suite.host()
    for command in (["show"], ["result"], ["cancel"], ["retry"], ["submit", "t", "--after"]):
        refused(tqctl(suite, *command, BEYOND_64_BITS), 5, f"no job {BEYOND_64_BITS}")


def test_batch_lines_name_the_line_and_field_and_take_durations(suite: Suite, tmp_path: Path) -> None:
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    for lines, words in ((['{"task": "t"}', '{"task": "t", "prio": 5}'], ["line 2", "unknown field 'prio'"]),
                         (['{"task": "t"}', "", '{"task": "t", "priority": "high"}'], ["line 3", "priority"]),
                         (['{"task": "t", "delay": "soon"}'], ["line 1", "delay", "'soon' is not a duration"]),
                         (['{"task": "t", "timeout": 0}'], ["line 1", "timeout", "at least 0.001s"]),
                         (['{"task": "t", "retries": -1}'], ["line 1", "retries", "0 or more"])):
        batch.write_text("\n".join(lines) + "\n")
        refused(tqctl(suite, "submit", "--batch", str(batch)), 2, str(batch), *words)
    assert suite.client().list_jobs() == []  # a bad line anywhere: nothing submitted
    batch.write_text('{"task": "t", "delay": "5m", "timeout": "2m"}\n{"task": "t", "delay": 60, "timeout": 30}\n')
    r = tqctl(suite, "submit", "--batch", str(batch))
    assert r.returncode == 0, r.stderr
    first, second = (suite.client().get(int(i)) for i in r.stdout.split())
    assert (first["state"], first["timeout"], round(first["run_at"] - first["created_at"])) == ("delayed", 120, 300)
    assert (second["timeout"], round(second["run_at"] - second["created_at"])) == (30, 60)


def test_a_batch_line_whose_task_tq_host_does_not_know_is_named_by_its_line(suite: Suite, tmp_path: Path) -> None:
    suite.write_config('\n[tasks.ticker]\nhandler = "echo"\n', echo_catch_all=False)
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    batch.write_text('{"task": "ticker", "args": ["b1"]}\n\n{"task": "nope"}\n{"task": "nope", "args": ["x"]}\n')
    refused(tqctl(suite, "submit", "--batch", str(batch)), 2, f"{batch}: line 3: unknown task 'nope'; known tasks: "
                                                              "ticker")
    refused(tqctl(suite, "submit", "--batch", "-", stdin=b'{"task": "ticker"}\n{"task": "a.b"}\n'), 2,
            "-: line 2: unknown task 'a.b'")
    assert suite.client().list_jobs() == []  # nothing submitted


def test_options_that_would_be_ignored_or_out_of_range_are_usage_errors(suite: Suite, tmp_path: Path) -> None:
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    batch.write_text('{"task": "t"}\n')
    line = b'{"task": "t"}\n'
    refused(tqctl(suite, "submit", "t", "--key", "orders.created"), 2, "--key", "--exchange")
    refused(tqctl(suite, "submit", "--batch", "-", "t", stdin=line), 2, "--batch", "TASK")
    refused(tqctl(suite, "submit", "--batch", str(batch), "--then", "u"), 2, "--batch", "--then")
    refused(tqctl(suite, "submit", "--batch", str(batch), "--queue", "q", "--wait"), 2, "--queue", "--wait")
    refused(tqctl(suite, "submit", "t", "--wait-timeout", "5s"), 2, "--wait-timeout", "--wait")
    refused(tqctl(suite, "list", "--limit", "-1"), 2, "--limit", "0 or more")
    refused(tqctl(suite, "submit", "t", "--retries", "-1"), 2, "--retries", "0 or more")
    refused(tqctl(suite, "submit", "t", "--timeout", "0"), 2, "--timeout", "at least 0.001s")
    refused(tqctl(suite, "submit", "t", "--timeout", "0.0001"), 2, "--timeout", "at least 0.001s")
    refused(tqctl(suite, "submit", "--batch", "-", stdin=b'{"task": "t", "timeout": 1e-320}\n'), 2, "line 1",
            "at least 0.001s")
    refused(tqctl(suite, "submit", "t" * 300), 2, "too long", "300 characters", "at most 100")
    for command in ("cancel", "retry"):
        r = tqctl(suite, command)
        refused(r, 2, "job ID", "--state", "--task", "--queue", "--older-than")
        assert "not both" not in r.stderr
        refused(tqctl(suite, command, "7", "--state", "failed"), 2, "not both", "--state")
    assert suite.client().list_jobs() == []


def test_a_run_time_past_the_year_9999_is_refused_and_one_before_the_epoch_runs_at_once(suite: Suite,
                                                                                        tmp_path: Path) -> None:
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    for line in ('{"task": "t", "delay": 1e308}', '{"task": "t", "at": 1e300}'):
        batch.write_text(line + "\n")
        refused(tqctl(suite, "submit", "--batch", str(batch)), 2, "year", "253402300800")
    refused(tqctl(suite, "submit", "t", "--at", "10000-01-01T00:00:00+00:00"), 2, "--at", "ISO 8601")
    refused(tqctl(suite, "submit", "t", "--delay", "3000000d"), 2, "delay", "past the year 9999")
    assert suite.client().list_jobs() == []
    for at in ("1969-12-31T23:59:59+00:00", "1900-01-01T00:00:00+00:00"):
        r = tqctl(suite, "submit", "t", "--at", at)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (at, r.stderr)
        assert suite.client().get(int(r.stdout))["state"] == "queued"  # a time past runs at once
        shown = tqctl(suite, "show", r.stdout.strip())
        assert shown.returncode == 0 and "run_at:      -" in shown.stdout, shown


def test_nan_and_infinity_are_refused_by_tq_host_and_by_a_batch_naming_the_line(suite: Suite, tmp_path: Path) -> None:
    """JSON has no NaN or infinity: a job holding one would be answered as invalid JSON ever after."""
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    for constant in ("NaN", "Infinity", "-Infinity"):
        batch.write_text(f'{{"task": "t"}}\n{{"task": "t", "args": [{constant}]}}\n')
        refused(tqctl(suite, "submit", "--batch", str(batch)), 2, f"{batch}: line 2", constant, "not a JSON number")
    for value in (float("nan"), float("inf")):
        with pytest.raises(Refused, match="is not a JSON number"):
            suite.client().submit("t", value)
    assert suite.client().list_jobs() == []


def test_a_number_past_a_doubles_range_is_refused_as_infinity_is(suite: Suite, tmp_path: Path) -> None:
    """1e400 reads as an infinity: tq-host refuses it (with the request's rid, so a client matching replies by rid
    is answered), as does a batch, naming the line (trial C §1)."""
    suite.host()
    batch = tmp_path / "jobs.jsonl"
    for number in ("1e400", "-1e400", "1.5e999"):
        batch.write_text(f'{{"task": "t"}}\n{{"task": "t", "args": [{number}]}}\n')
        refused(tqctl(suite, "submit", "--batch", str(batch)), 2, f"{batch}: line 2", number, "too large a number")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(suite.dir / "tq.sock"))
        reader = s.makefile("rb")
        for rid, body in ((7, '"jobs":[{"task":"t","args":[1e400]}]'), (8, '"jobs":[{"task":"t","priority":-1e400}]'),
                          (9, '"jobs":[{"task":"t","args":[NaN]}]')):
            s.sendall(f'{{"op":"submit","rid":{rid},{body}}}\n'.encode())
            reply = json.loads(reader.readline())
            assert reply["rid"] == rid and reply["ok"] is False and reply["code"] == "bad_request", reply
    assert suite.client().list_jobs() == []


def test_a_name_ending_in_a_newline_is_refused_as_any_invalid_name(suite: Suite) -> None:
    """`$` in a pattern matches before a final newline: each entry point must take the whole name."""
    suite.host()
    refused(tqctl(suite, "submit", "t", "--queue", "default\n"), 2, "invalid queue name 'default\\n'")
    refused(tqctl(suite, "pause", "default\n"), 2, "invalid queue name 'default\\n'")
    refused(tqctl(suite, "list", "--queue", "default\n"), 2, "invalid queue name 'default\\n'")
    refused(tqctl(suite, "token", "create", "x\n", "--user", "root"), 2, "invalid token name 'x\\n'")
    assert suite.client().list_jobs() == [] and suite.client().token_list() == []
    worker = subprocess.run([sys.executable, "-m", "tq.worker", "--config", str(suite.config), "3\n"],
                            env=suite.env, capture_output=True, text=True, timeout=60)
    refused(worker, 2, "invalid instance '3\\n'")


def _capped(limit: int = 1 << 30) -> Callable[[], None]:
    """A child's address space capped (1 GiB): an endless read fails in the child, not the machine."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_stdin_is_read_no_further_than_a_job_or_a_request_can_hold(suite: Suite) -> None:
    suite.host()
    with open("/dev/zero", "rb") as endless:
        for command, words in ((["submit", "x", "--payload", "-"], ["--payload -", "16 MiB"]),
                               (["submit", "--batch", "-"], ["-: line 1", "64 MiB"])):
            r = subprocess.run([sys.executable, "-m", "tq.ctl", "--config", str(suite.config), *command],
                               env=suite.env, capture_output=True, text=True, timeout=60, stdin=endless,
                               preexec_fn=_capped())
            refused(r, 2, *words)
    refused(tqctl(suite, "submit", "x", "--payload", "-", stdin=b"a" * (16 * 1024 * 1024 + 1)), 2, "16 MiB")
    assert suite.client().list_jobs() == []


def test_a_configuration_file_that_is_no_regular_file_is_refused_at_once(suite: Suite, tmp_path: Path) -> None:
    fifo = tmp_path / "tq.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big" / "tq.toml"
    big.parent.mkdir()
    big.write_text("#" * (1024 * 1024) + "\n")
    for path, words in (("/dev/zero", ["/dev/zero", "not a regular file (a character device)"]),
                        (str(fifo), [str(fifo), "not a regular file (a FIFO)"]),
                        (str(big), [str(big), "more than 1 MiB"])):
        for argv in ([sys.executable, "-m", "tq.ctl", "--config", path, "config", "check"],
                     [sys.executable, "-m", "tq.host", "--config", path]):
            r = subprocess.run(argv, env=suite.env, capture_output=True, text=True, timeout=20,
                               stdin=subprocess.DEVNULL, preexec_fn=_capped())
            refused(r, 2, *words)


def test_a_relative_state_dir_is_refused_by_config_check_and_tq_host(suite: Suite) -> None:
    dropins = suite.config.parent / "tq.d"
    dropins.mkdir()
    (dropins / "80-rel.toml").write_text('[host]\nstate_dir = "relstate"\n')
    words = [f"{dropins}/80-rel.toml: host.state_dir: expected an absolute path", "'relstate'"]
    refused(tqctl(suite, "config", "check"), 2, *words)
    host = subprocess.run([sys.executable, "-m", "tq.host", "--config", str(suite.config)], env=suite.env,
                          capture_output=True, text=True, timeout=60, cwd=suite.dir)
    refused(host, 2, *words)
    assert not (suite.dir / "relstate").exists()


def test_an_id_or_count_in_other_digits_than_ascii_is_a_usage_error(suite: Suite) -> None:
    suite.host()
    suite.client().submit("t")
    arabic_one = "\u0661"  # Arabic-Indic 1: Python's int() takes it
    for command in (["show"], ["result"], ["cancel"], ["retry"], ["list", "--after"], ["submit", "t", "--after"],
                    ["events", "--job"]):
        refused(tqctl(suite, *command, arabic_one), 2, "expected a job id (digits 0-9)")
    refused(tqctl(suite, "list", "--limit", arabic_one), 2, "expected a whole number")
    refused(tqctl(suite, "show", "1_0"), 2, "expected a job id")
    assert tqctl(suite, "show", "1").returncode == 0


@pytest.mark.parametrize("digit", ["\u0663", "\uff13"])  # Arabic-Indic and fullwidth 3: int() and float() take both
def test_a_priority_or_duration_in_other_digits_than_ascii_is_a_usage_error(suite: Suite, digit: str) -> None:
    suite.host()
    refused(tqctl(suite, "submit", "t", "--priority", digit), 2, "--priority", "expected a whole number")
    refused(tqctl(suite, "submit", "t", "--priority", "1_0"), 2, "--priority", "expected a whole number")
    for option in ("--delay", "--timeout"):
        refused(tqctl(suite, "submit", "t", option, f"{digit}s"), 2, option, "is not a duration")
    refused(tqctl(suite, "submit", "--batch", "-", stdin=f'{{"task": "t", "delay": "{digit}m"}}\n'.encode()), 2,
            "line 1", "delay", "is not a duration")
    assert suite.client().list_jobs() == []
    assert tqctl(suite, "submit", "t", "--priority", "-3", "--delay", "3s").returncode == 0


def stderr_writes(suite: Suite, argv: list[str], tmp_path: Path) -> tuple[int, list[str]]:
    """`argv` run under strace: its exit status and what each write() to its stderr held (as strace shows it)."""
    trace = tmp_path / f"strace.{len(list(tmp_path.glob('strace.*')))}"
    strace = ["strace", "-qq", "-e", "trace=write", "-e", "signal=none", "-s", "100000", "-o", str(trace)]
    r = subprocess.run([*strace, sys.executable, *argv], env=suite.env, capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    return r.returncode, re.findall(r'^write\(2, "(.*)", \d+\)', trace.read_text(), re.MULTILINE)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_each_line_on_stderr_is_one_write(suite: Suite, tmp_path: Path) -> None:
    """print(..., file=sys.stderr) writes the text and the newline apart: a reader (a follower's parent, the
    journal's stream, a test awaiting the line) could see half a line. tqctl's errors and warnings, and a daemon's
    line before its logging, are each one write."""
    tqctl = ["-m", "tq.ctl", "--config", str(suite.config)]
    status, writes = stderr_writes(suite, [*tqctl, "status"], tmp_path)  # no tq-host: an error line
    assert status == 3 and len(writes) == 1 and writes[0].startswith("tqctl: tq-host is not reachable"), writes
    with suite.config.open("a") as f:
        f.write('[tasks."task-*"]\n')
    status, writes = stderr_writes(suite, [*tqctl, "config", "check"], tmp_path)  # a warning
    assert status == 0 and len(writes) == 1 and "matches no task" in writes[0], writes
    with suite.config.open("a") as f:
        f.write("[nosuch]\n")
    status, writes = stderr_writes(suite, ["-m", "tq.host", "--config", str(suite.config)], tmp_path)
    assert status == 2 and len(writes) == 1 and "unknown key" in writes[0], writes
    assert all(w.endswith("\\n") and "\\n" not in w[:-2] for w in writes), writes


def test_a_non_utf8_argument_is_cut_in_the_error(suite: Suite) -> None:
    r = tqctl(suite, "submit", "x", b"\xc3" * 8000)
    refused(r, 2, "not UTF-8", "(8000 bytes)")
    assert len(r.stderr) < 400, len(r.stderr)
