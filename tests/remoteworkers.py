"""Workers as on a machine of their own, through a broker: tq-worker processes with their own configuration
([transport] kind = "amqp") and runtime directory, beside a test suite's tq-host."""

from __future__ import annotations

import uuid
from pathlib import Path

from harness import Daemon, Suite


def remote_config(suite: Suite, url: str, machine_dir: str, queues: str = '["remote"]', transport: str = "") -> Path:
    """A worker machine's configuration: the broker (and `transport`, more [transport] lines), its own runtime
    directory (its instance locks)."""
    d = suite.dir / machine_dir
    d.mkdir(exist_ok=True)
    path = d / "tq.toml"
    path.write_text(f'[host]\nsocket = "{d}/tq.sock"\n[mqueue]\nprefix = "{suite.prefix}"\n'
                    f'[transport]\nkind = "amqp"\nurl = "{url}"\n{transport}'
                    f'[worker]\nqueues = {queues}\nheartbeat = "200ms"\n[tasks."#"]\nhandler = "echo"\n')
    return path


def remote_worker(suite: Suite, config: Path, instance: str = "1", ready: bool = True) -> Daemon:
    argv = [*suite._python("tq.worker", instance)]
    argv[argv.index("--config") + 1] = str(config)
    d = Daemon(f"remote{instance}-{uuid.uuid4().hex[:4]}", argv, suite.env, suite.dir)
    suite.daemons.append(d)
    return d.ready(timeout=60) if ready else d
