"""tqctl's bash completion for real: bash sources packaging/bash-completion/tqctl and calls its function as
programmable completion does, and the tqctl it runs asks a running tq-host."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

from harness import ROOT, Suite

SCRIPT = ROOT / "packaging/bash-completion/tqctl"


def complete(suite: Suite, line: str) -> list[str]:
    """What bash offers after `line` (the cursor at its end), with `tqctl` on PATH and TQ_CONFIG the suite's."""
    bindir = suite.dir / "bin"
    if not bindir.exists():
        bindir.mkdir()
        (bindir / "tqctl").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tq.ctl \"$@\"\n")
        (bindir / "tqctl").chmod(0o755)
    script = f"""
source {shlex.quote(str(SCRIPT))}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<<"$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_tqctl tqctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**suite.env, "PATH": f"{bindir}:{suite.env['PATH']}", "TQ_CONFIG": str(suite.config)}
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    return [w for w in result.stdout.split("\n") if w]


def test_bash_completes_commands_options_and_the_running_hosts_tasks_and_queues(suite: Suite) -> None:
    suite.write_config('\n[tasks.resize]\nhandler = "echo"\n\n[queues.mail]\nconcurrency = 1\n')
    host, _ = suite.start(workers=1)
    c = suite.client()
    c.wait(c.submit("thumbnail-42"), timeout=30)  # a task that only "#" serves: the host has seen it
    c.submit("resize", queue="adhoc")  # a queue that no table and no worker names: the host knows it

    assert {"submit", "status", "list", "queues", "workers", "config"} <= set(complete(suite, "tqctl "))
    assert "_complete" not in complete(suite, "tqctl ")
    assert complete(suite, "tqctl sub") == ["submit"]
    assert {"--queue", "--priority", "--wait", "--batch"} <= set(complete(suite, "tqctl submit --"))
    assert complete(suite, "tqctl submit --wai") == ["--wait", "--wait-timeout"]
    assert {"adhoc", "mail", "default"} <= set(complete(suite, "tqctl submit --queue "))
    assert complete(suite, "tqctl pause ad") == ["adhoc"]
    assert set(complete(suite, "tqctl submit ")) == {"resize", "thumbnail-42"}
    assert complete(suite, "tqctl list --state ru") == ["running"]

    host.signal(signal.SIGTERM)  # without a host: the configuration's names, and not a word of error
    host.wait()
    assert set(complete(suite, "tqctl submit --queue ")) == {"default", "mail"}
    assert complete(suite, "tqctl submit res") == ["resize"]
